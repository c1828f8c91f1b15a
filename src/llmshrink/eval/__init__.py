"""Evaluation: perplexity (transformers or llama.cpp), zero-shot accuracy (lm-eval and built-in
offline tasks), decode speed and memory, side-by-side comparisons and reports."""
