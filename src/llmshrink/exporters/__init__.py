"""Exporters of compressed models: Hugging Face GPTQ folders (``hf``) and GGUF files for llama.cpp
(``gguf``, one class per GGML type in ``ggml``), each consuming the quantizer's result."""
