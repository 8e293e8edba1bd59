"""Anima's HTTP layer: the OpenAI wire protocol, the request pipeline and the backends."""
