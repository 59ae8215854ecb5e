"""Build and drive the Metal-kernel harness (harness.cpp) from Python."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNEL = ROOT / "overlay" / "mlx" / "backend" / "metal" / "kernels" / "rms_norm_fused.metal"
BUILD = ROOT / "build" / "metal-harness"
ORDERS = ("forward", "reverse", "simdgroup0_last", "simdgroup_eager")
EPS = 1e-5
# Every harness run ends within this many seconds or fails: a hang is a bug.
TIMEOUT_S = 120


def threadgroup_to_shim(source: str) -> str:
    """The one tests-only change to a .metal source: threadgroup arrays come
    from the harness, fresh and poisoned for each threadgroup."""
    return re.sub(
        r"\bthreadgroup\s+(\w+)\s+(\w+)\[([^\]]+)\];", r"MLXR_THREADGROUP(\1, \2, \3);", source
    )


def compile_harness(source: str, name: str, asan: bool = False) -> Path:
    """Compile harness.cpp around a kernel source; cached by everything it reads."""
    inputs = [source.encode(), (HERE / "harness.cpp").read_bytes(), str(asan).encode()]
    inputs += [p.read_bytes() for p in sorted((HERE / "shim").rglob("*")) if p.is_file()]
    inputs.append((ROOT / "overlay/mlx/backend/metal/rms_norm_fused.h").read_bytes())
    key = hashlib.sha256(b"\0".join(inputs)).hexdigest()[:16]
    out_dir = BUILD / f"{name}-{key}"
    binary = out_dir / "harness"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = out_dir / "kernel.metal"
    kernel.write_text(threadgroup_to_shim(source))
    # Uninitialised thread-local values get a pattern (-1.7e38 in float32)
    # instead of whatever the stack held, so that reading one shows.
    flags = ["-O1", "-g", "-ftrivial-auto-var-init=pattern"]
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-DMLXR_ASAN"]
    cmd = [
        os.environ.get("CXX", "g++"), "-std=c++20", *flags, "-Wall", "-Wno-attributes",
        "-Wno-unused-variable", "-pthread", f"-I{HERE / 'shim'}", f"-I{ROOT / 'overlay'}",
        f"-I{ROOT / 'mlx_upstream'}", f'-DMLXR_KERNEL_SOURCE="{kernel}"',
        str(HERE / "harness.cpp"), "-o", str(binary),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"harness does not compile:\n{proc.stderr[-4000:]}")
    return binary


# Storage of each dtype, and exact conversions to and from float32.
def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    rounded = ((u + ((u >> 16) & 1) + 0x7FFF) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float32).astype(np.float16)
    return f32_to_bf16(x)


def to_f32(stored: np.ndarray, dtype: str) -> np.ndarray:
    return bf16_to_f32(stored) if dtype == "bfloat16" else stored.astype(np.float32)


def storage_type(dtype: str) -> type:
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]


@dataclass
class Case:
    family: str  # fwd or vjp
    dtype: str
    rows: int
    axis: int
    residual: bool
    has_w: bool
    order: str = "reverse"
    # vjp: the target number of row groups, in place of RMS_FUSED_VJP_GROUPS.
    groups: int | None = None
    # The pipelines' maxTotalThreadsPerThreadgroup, which eval_gpu respects;
    # the looped kernels' own, if it differs.
    max_threads: int = 1024
    looped_max_threads: int | None = None
    # Inputs are standard normal times this (large magnitudes: 100).
    scale: float = 1.0
    # The form (see RMSNormFused): x normalized with the branch weight before
    # the add (branch), no output norm (post), the weight offset, the clipped
    # float16 add. The backward takes only the offset.
    branch: bool = False
    post: bool = False
    offset: float = 0.0
    clip: bool = False
    # The residual r is standard normal times this (a large one makes clip act).
    residual_scale: float = 1.0

    def inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed + self.axis)
        shape = (self.rows, self.axis)
        names = ("x", "r") if self.family == "fwd" else ("h", "dy", "dh_in")
        arrays = {n: to_storage(self.scale * rng.normal(size=shape), self.dtype) for n in names}
        arrays["w"] = to_storage(rng.normal(size=self.axis), self.dtype)
        arrays["wb"] = to_storage(rng.normal(size=self.axis), self.dtype)
        if self.family == "fwd" and self.residual_scale != 1.0:
            # Kept within the dtype's range: the sums, not the residual, overflow.
            big = np.clip(self.residual_scale * to_f32(arrays["r"], self.dtype), -65504, 65504)
            arrays["r"] = to_storage(big, self.dtype)
        return arrays

    def form_env(self) -> dict[str, str]:
        form = f"{int(self.branch)} {int(not self.post)} {self.offset!r} {int(self.clip)}"
        return {**os.environ, "MLXR_FORM": form}


def run(binary: Path, case: Case, work: Path, timeout: float = TIMEOUT_S) -> dict[str, np.ndarray]:
    """Run one launch; return the inputs and the outputs, as stored. A run
    that does not end within `timeout` seconds fails."""
    work.mkdir(parents=True, exist_ok=True)
    arrays = case.inputs()
    for name, a in arrays.items():
        a.tofile(work / f"{name}.bin")
    cmd = [
        str(binary), "run", case.family, case.dtype, str(case.rows), str(case.axis),
        str(int(case.residual)), str(int(case.has_w)), case.order, str(work),
    ]  # fmt: skip
    cmd += [str(case.groups or 0), str(case.max_threads)]
    if case.looped_max_threads is not None:
        cmd.append(str(case.looped_max_threads))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=case.form_env()
        )
    except subprocess.TimeoutExpired:
        raise HarnessFailure(f"hang: the harness ran past {timeout} s") from None
    if proc.returncode != 0:
        raise HarnessFailure(proc.stderr.strip() or f"exit {proc.returncode}")
    launch = dict(item.split("=", 1) for item in proc.stdout.split())
    arrays["groups"] = int(launch["groups"])
    arrays["rows_per_group"] = int(launch["rows_per_group"])
    arrays["threadgroup"] = int(launch["threadgroup"])
    arrays["kernel"] = launch["ran"]
    shapes = {"out": (case.rows, case.axis), "h": (case.rows, case.axis)}
    shapes |= {"dh": (case.rows, case.axis), "dw_partials": (arrays["groups"], case.axis)}
    shapes["dw"] = (case.axis,)
    outputs = ("out", "h") if case.family == "fwd" else ("dh", "dw_partials", "dw")
    for name in outputs:
        if name == "h" and not case.residual or name.startswith("dw") and not case.has_w:
            continue
        if name == "out" and case.post:
            continue
        kind = np.float32 if name == "dw_partials" else storage_type(case.dtype)
        arrays[f"{name}_out"] = np.fromfile(work / f"{name}.bin", dtype=kind).reshape(shapes[name])
    return arrays


class HarnessFailure(AssertionError):
    pass


def geometry(
    binary: Path, axis: int, rows: int, max_threads: int = 1024, looped_max: int | None = None
) -> dict[str, str]:
    cmd = [str(binary), "geometry", str(axis), str(rows), str(max_threads)]
    cmd += [] if looped_max is None else [str(looped_max)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=TIMEOUT_S).stdout
    return dict(item.split("=", 1) for item in out.split())
