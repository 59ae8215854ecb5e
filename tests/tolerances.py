"""Tolerances shared by the CPU tests and the Metal harness, by dtype name."""

# Against the exact (float64) result the output is rounded twice (the
# normalized value, then the product with the weight): about two units in the
# last place. In float32 the float32 sum of squares adds up to two more.
REF_RTOL = {"float32": 4 * 2.0**-23, "float16": 2 * 2.0**-10, "bfloat16": 2 * 2.0**-7}

# Below the smallest normal number precision is absolute, not relative.
SMALLEST_NORMAL = {"float32": 2.0**-126, "float16": 2.0**-14, "bfloat16": 2.0**-126}

# MLX's own tolerances against mx.fast.rms_norm (absolute, on data in [0, 1)).
MLX_ATOL = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}
