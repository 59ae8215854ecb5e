"""Run upstream's python/tests in parallel chunks on one GPU machine.

On CUDA, MLX compiles many kernels at run time (NVRTC, 20-45 s for a quantized
matmul), so one pytest process takes most of an hour. The tests are collected
once, cut into chunks of consecutive test ids (so tests that share kernels tend
to share a process), and handed to a pool of workers as each becomes free. Each
chunk writes its own JUnit XML into --out; compare_suites.py reads the folder.
Each worker has its own PTX cache: MLX writes that cache without locking, so two
processes sharing it could read a half-written file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]


@dataclass
class Chunk:
    index: int
    test_ids: list[str]


@dataclass
class Running:
    chunk: Chunk
    worker: int
    proc: subprocess.Popen[bytes]
    started: float


def collect(tests_dir: Path) -> list[str]:
    proc = subprocess.run(
        [*PYTEST, "--collect-only", "-o", "addopts=", "--rootdir=.", "."],
        cwd=tests_dir,
        capture_output=True,
        text=True,
    )
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    if not ids:
        sys.exit(f"run_suite.py: no tests collected in {tests_dir}:\n{proc.stdout[-2000:]}")
    return ids


def chunks(test_ids: list[str], size: int, first: list[str]) -> deque[Chunk]:
    """Consecutive ids, `size` at a time, files named in `first` leading."""

    def rank(test_id: str) -> int:
        name = test_id.split("::")[0]
        return first.index(name) if name in first else len(first)

    ordered = sorted(test_ids, key=rank)  # stable: keeps each file's order
    return deque(
        Chunk(i, ordered[start : start + size])
        for i, start in enumerate(range(0, len(ordered), size))
    )


def start(chunk: Chunk, worker: int, tests_dir: Path, out: Path, tag: str) -> Running:
    env = {**os.environ, "MLX_PTX_CACHE_DIR": f"/tmp/ptx-{tag}-{worker}"}
    log = (out / f"chunk-{chunk.index:03d}.log").open("wb")
    proc = subprocess.Popen(
        [
            *PYTEST,
            "-o",
            "addopts=",
            "--rootdir=.",
            f"--junitxml={out / f'chunk-{chunk.index:03d}.xml'}",
            *chunk.test_ids,
        ],
        cwd=tests_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return Running(chunk, worker, proc, time.monotonic())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("tests_dir", type=Path, help="upstream's python/tests folder")
    p.add_argument("--out", type=Path, required=True, help="folder for chunk-NNN.xml and .log")
    p.add_argument("--tag", default="suite", help="names the workers' PTX caches")
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--chunk", type=int, default=20, help="tests per chunk (default 20)")
    p.add_argument("--first", default="", help="comma-separated test files to start first")
    p.add_argument(
        "--deadline", type=float, default=540, help="seconds; later chunks are stopped and counted"
    )
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    begin = time.monotonic()
    pending = chunks(collect(args.tests_dir), args.chunk, [f for f in args.first.split(",") if f])
    total = len(pending)
    print(f"run_suite.py {args.tag}: {total} chunks of up to {args.chunk} tests", flush=True)
    running: list[Running] = []
    free = list(range(args.workers))
    done = killed = not_started = 0
    while pending or running:
        late = time.monotonic() - begin > args.deadline
        while free and pending and not late:
            running.append(start(pending.popleft(), free.pop(), args.tests_dir, args.out, args.tag))
        for job in list(running):
            if late and job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()
                killed += 1
            if job.proc.poll() is None:
                continue
            running.remove(job)
            free.append(job.worker)
            done += 1
            took = time.monotonic() - job.started
            print(
                f"[{done}/{total}] chunk {job.chunk.index} ({job.chunk.test_ids[0]}, ...) "
                f"rc {job.proc.returncode} in {took:.0f} s",
                flush=True,
            )
        if late:
            not_started += len(pending)
            pending.clear()
        time.sleep(0.5)
    print(
        f"run_suite.py {args.tag}: {done - killed} of {total} chunks ran; at the "
        f"{args.deadline:.0f} s deadline {killed} were stopped and {not_started} not started; "
        f"{time.monotonic() - begin:.0f} s",
        flush=True,
    )
    return 1 if killed or not_started else 0


if __name__ == "__main__":
    sys.exit(main())
