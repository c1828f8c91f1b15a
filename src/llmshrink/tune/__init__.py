"""Training: one small loop shared by healing (prune) and tail fine-tuning, its configs and
resumable checkpoints."""
