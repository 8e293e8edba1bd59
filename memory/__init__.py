"""Anima's memory: conversations, turns, recall and summaries.

Imports nothing from proxy, emotion or personas.
"""
