"""INT4 matmul kernels: y = x @ dequantize(W).T without writing the float W to memory.

- `torch_int4`: torch's built-in tinygemm int4 ops (`aten._weight_int4pack_mm`, CUDA; `..._for_cpu`, CPU).
- `triton_w4a16`: a short Triton kernel written to be read; runs on CUDA, or on CPU tensors when the
  environment variable TRITON_INTERPRET=1 is set before triton is imported. Triton is imported lazily:
  `import qviz.kernels` works without it.
"""
