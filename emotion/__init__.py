"""Anima's emotional awareness: what the user feels, how strongly, and how it shapes the reply."""
