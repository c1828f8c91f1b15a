"""Exporters of compressed models: Hugging Face GPTQ folders (``hf``) and GGUF files for llama.cpp
(``gguf``; one class per GGML type in ``ggml_legacy`` and ``ggml_k``, looked up in ``ggml``;
llama.cpp's per-tensor K-quant mixes in ``gguf_mix``), each consuming the quantizer's result."""
