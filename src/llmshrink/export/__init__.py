"""Writers for compressed models: Hugging Face GPTQ checkpoints (GGUF to come)."""
