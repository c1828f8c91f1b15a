"""Corpora, token windows and instruction templates."""
