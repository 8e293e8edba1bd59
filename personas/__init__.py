"""Anima's personas: who the model is, and the budgeted prompt that keeps it in character."""
