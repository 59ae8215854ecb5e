"""mlxr: the model side of mlxr's fused kernels.

`fuse(model)` rewrites a supported mlx-lm model in place so that every residual add and RMS
norm between its decoder blocks goes through `mx.fast.rmsnorm_fused`, with the residual stream
carried from block to block. `supported_architectures()` names the model types it knows.
"""

from ._fuse import fuse, is_fused
from ._registry import supported_architectures

__all__ = ["fuse", "is_fused", "supported_architectures"]
__version__ = "0.1.0"
