"""Weight quantization: the configs, affine grids, round-to-nearest and the GPTQ solve (tensors in,
results out), GPTQ packing and the packed linear layer, and the block-by-block driver."""
