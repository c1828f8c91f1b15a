"""Weight quantization: affine grids, round-to-nearest, and the GPTQ solve (pure tensor code)."""
