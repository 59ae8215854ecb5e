# Copyright © 2026 Apple Inc.

import mlx.core as mx
from time_utils import time_fn


def add_rms_norm(x, r, w, eps):
    h = x + r
    return mx.fast.rms_norm(h, w, eps), h


def time_rmsnorm_fused():
    x = mx.random.uniform(shape=(8, 1024, 4096)).astype(mx.float16)
    r = mx.random.uniform(shape=(8, 1024, 4096)).astype(mx.float16)
    w = mx.random.uniform(shape=(4096,)).astype(mx.float16)
    mx.eval(x, r, w)

    def unfused_loop(x, r, w):
        for _ in range(32):
            x, r = add_rms_norm(x, r, w, 1e-5)
        return x, r

    def fused_loop(x, r, w):
        for _ in range(32):
            x, r = mx.fast.rmsnorm_fused(x, w, 1e-5, residual=r)
        return x, r

    time_fn(unfused_loop, x, r, w)
    time_fn(fused_loop, x, r, w)
    time_fn(mx.compile(unfused_loop), x, r, w)

    f1 = lambda x, r, w, y: (add_rms_norm(x, r, w, 1e-5)[0] * y).sum()
    f2 = lambda x, r, w, y: (mx.fast.rmsnorm_fused(x, w, 1e-5, residual=r)[0] * y).sum()
    g1 = mx.grad(f1, argnums=(0, 1, 2))
    g2 = mx.grad(f2, argnums=(0, 1, 2))
    y = mx.random.uniform(shape=(8, 1024, 4096)).astype(mx.float16)
    mx.eval(y)

    def grad_loop(g, x, r, w):
        gx, gr, gw = x, r, w
        for _ in range(8):
            gx, gr, gw = g(gx, gr, gw, y)
        return gx, gr, gw

    time_fn(grad_loop, g1, x, r, w)
    time_fn(grad_loop, g2, x, r, w)


if __name__ == "__main__":
    time_rmsnorm_fused()
