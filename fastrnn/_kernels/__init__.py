"""Private numba kernels: arrays in, arrays out, no validation."""
