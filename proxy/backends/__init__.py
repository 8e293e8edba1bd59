"""Backends: one small Protocol (`base.Backend`) and one adapter module per kind of model server."""
