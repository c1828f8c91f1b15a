"""Evaluation: perplexity (and, later, zero-shot tasks and speed)."""
