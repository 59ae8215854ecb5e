"""Run upstream's python/tests in parallel chunks on one GPU machine.

On CUDA, MLX compiles many kernels at run time (NVRTC, 20-45 s for a quantized
matmul), so one pytest process takes most of an hour. The tests are collected
once, cut into chunks of consecutive test ids (so tests that share kernels tend
to share a process; --chunk-for makes a slow file's chunks smaller), and handed
to a pool of workers as each becomes free. The chunks' JUnit XML is merged into
one file (--junit) and their output into one log (--log): the GPU machines
return a limited number of files. Each worker has its own PTX cache: MLX
writes that cache without locking, so two processes sharing it could read a
half-written file. What a finished chunk compiled is shared all the same: its
new cache files are linked into a pool, and the pool's files into a worker's
cache before its next chunk starts, while no process of that worker runs, so
that a kernel is compiled about once per suite instead of once per worker. A
chunk stopped at the deadline shares the kernels it had finished writing, so
that its next run does not compile them again.
--only and --exclude pick test files or single tests, so that a slow file can
have a run of its own, and --first starts files or tests ahead of the others.
--pool keeps the pool where a later call can carry it back, and --resume
takes an earlier run's merged XML: its tests are not run again and its
results join this run's, so a suite longer than one device call can finish
over several.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlxrtools.environment.upstream_suite import junit_test_ids  # noqa: E402

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


def file_of(test_id: str) -> str:
    return test_id.split("::")[0]


def picks(test_id: str, entry: str) -> bool:
    """Whether an --only, --exclude or --first entry names this test: a file
    (test_quantized.py) names its tests, a test id
    (test_quantized.py::TestQuantized::test_qmv) names itself and its parameters."""
    if "::" not in entry:
        return file_of(test_id) == entry
    return test_id == entry or test_id.startswith((f"{entry}::", f"{entry}["))


def select(test_ids: list[str], only: list[str], exclude: list[str]) -> list[str]:
    """The tests that `only` names (every test if empty), less those that `exclude` names."""
    return [
        test_id
        for test_id in test_ids
        if (not only or any(picks(test_id, e) for e in only))
        and not any(picks(test_id, e) for e in exclude)
    ]


def suite_id(test_id: str) -> str:
    """How parse_junit names a pytest test id: test_eval.py::TestEval::test_x is
    test_eval.TestEval::test_x (the JUnit classname, then the name)."""
    path, *scopes = test_id.split("::")
    module = path.removesuffix(".py").replace("/", ".")
    return f"{'.'.join([module, *scopes[:-1]])}::{scopes[-1]}"


def node_id(test_id: str) -> str:
    """The other way, from a test as parse_junit names it (test_eval.TestEval::test_x)
    to pytest's test_eval.py::TestEval::test_x."""
    scope, name = test_id.rsplit("::", 1)
    module, *classes = scope.split(".")
    return "::".join([f"{module}.py", *classes, name])


# The files MLX writes for one kernel (jit_module.cpp, write_cached_ptx), all
# in one call that takes milliseconds.
KERNEL_FILES = (".ptx", ".txt", ".cu")
# How long before a worker stopped its kernel's files must have been written
# for the kernel to count as whole.
SETTLED_SECONDS = 5.0


def written_before(path: Path, moment: float) -> bool:
    """Whether the kernel that path is a file of has all its files, each last
    written before moment (a time.time()): a process stopped while writing
    one leaves it with the time of the stop."""
    files = [path.with_suffix(suffix) for suffix in KERNEL_FILES]
    return all(f.is_file() and f.stat().st_mtime < moment for f in files)


def link_new(src: Path, dst: Path, settled_before: float | None = None) -> int:
    """Hard-links every file under src that dst lacks into dst, at the same
    relative path (MLX nests long kernel names in folders); returns how many.
    With settled_before, only the files of kernels written whole before then."""
    linked = 0
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if not path.is_file() or target.exists():
            continue
        if settled_before is not None and not written_before(path, settled_before):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
        linked += 1
    return linked


def chunks(
    test_ids: list[str], size: int, first: list[str], size_for: dict[str, int]
) -> deque[Chunk]:
    """Consecutive ids of one file, `size` at a time (`size_for[file]` for the
    files named there), the files or tests named in `first` leading, in its order."""

    def rank(test_id: str) -> int:
        return next((i for i, entry in enumerate(first) if picks(test_id, entry)), len(first))

    ordered = sorted(test_ids, key=rank)  # stable: keeps each file's order
    out: deque[Chunk] = deque()
    current: list[str] = []
    for test_id in ordered:
        if current and (
            file_of(current[0]) != file_of(test_id)
            or len(current) >= size_for.get(file_of(current[0]), size)
        ):
            out.append(Chunk(len(out), current))
            current = []
        current.append(test_id)
    if current:
        out.append(Chunk(len(out), current))
    return out


def merge_junit(parts: list[Path], junit: Path) -> None:
    """The test cases of every chunk's JUnit XML, in one test suite."""
    suite = ET.Element("testsuite", name="pytest")
    for part in parts:
        suite.extend(ET.parse(part).getroot().iter("testcase"))
    ET.ElementTree(suite).write(junit)


def ptx_cache(pool: Path, worker: int) -> Path:
    """A worker's own cache, beside the pool: hard links need one file system."""
    return pool.with_name(f"{pool.name}-worker-{worker}")


def start(chunk: Chunk, worker: int, tests_dir: Path, work: Path, pool: Path) -> Running:
    cache = ptx_cache(pool, worker)
    cache.mkdir(parents=True, exist_ok=True)
    link_new(pool, cache)
    env = {**os.environ, "MLX_PTX_CACHE_DIR": str(cache)}
    log = (work / f"chunk-{chunk.index:03d}.log").open("wb")
    proc = subprocess.Popen(
        [
            *PYTEST,
            "-o",
            "addopts=",
            "--rootdir=.",
            f"--junitxml={work / f'chunk-{chunk.index:03d}.xml'}",
            *chunk.test_ids,
        ],
        cwd=tests_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return Running(chunk, worker, proc, time.monotonic())


def sizes(text: str) -> dict[str, int]:
    """FILE=N,FILE=N."""
    pairs = (item.split("=") for item in text.split(",") if item)
    return {name: int(n) for name, n in pairs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("tests_dir", type=Path, help="upstream's python/tests folder")
    p.add_argument("--junit", type=Path, required=True, help="the merged JUnit XML to write")
    p.add_argument("--log", type=Path, required=True, help="every chunk's output, in order")
    p.add_argument("--tag", default="suite", help="names the workers' PTX caches")
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--chunk", type=int, default=20, help="tests per chunk (default 20)")
    p.add_argument("--chunk-for", default="", help="FILE=N,...: tests per chunk for these files")
    p.add_argument(
        "--first",
        default="",
        help="comma-separated test files or test ids (FILE::CLASS::TEST) to start first",
    )
    p.add_argument(
        "--only", default="", help="comma-separated test files or test ids to run (default: all)"
    )
    p.add_argument(
        "--exclude", default="", help="comma-separated test files or test ids not to run"
    )
    p.add_argument(
        "--deadline", type=float, default=540, help="seconds; later chunks are stopped and counted"
    )
    p.add_argument(
        "--pool",
        type=Path,
        help="the shared PTX pool (default: /tmp/ptx-TAG-pool); may hold an earlier run's kernels",
    )
    p.add_argument(
        "--resume", type=Path, help="an earlier run's merged XML: skip its tests, keep its results"
    )
    args = p.parse_args()
    # Absolute: the chunks run in the tests folder, where MLX would take a
    # relative cache path from.
    pool = (args.pool or Path(f"/tmp/ptx-{args.tag}-pool")).resolve()
    work = Path(tempfile.mkdtemp(prefix=f"suite-{args.tag}-"))
    begin = time.monotonic()
    first = [f for f in args.first.split(",") if f]
    only, exclude = ([f for f in text.split(",") if f] for text in (args.only, args.exclude))
    test_ids = select(collect(args.tests_dir), only, exclude)
    earlier: list[Path] = []
    if args.resume and args.resume.exists():
        have = junit_test_ids(args.resume)
        earlier = [work / "earlier.xml"]
        earlier[0].write_bytes(args.resume.read_bytes())  # --junit may be the same file
        test_ids = [t for t in test_ids if suite_id(t) not in have]
        print(f"run_suite.py {args.tag}: {len(have)} results kept from {args.resume}", flush=True)
    pending = chunks(test_ids, args.chunk, first, sizes(args.chunk_for))
    pool.mkdir(parents=True, exist_ok=True)
    total = len(pending)
    print(f"run_suite.py {args.tag}: {total} chunks, in {work}", flush=True)
    running: list[Running] = []
    free = list(range(args.workers))
    done = killed = not_started = 0
    while pending or running:
        late = time.monotonic() - begin > args.deadline
        while free and pending and not late:
            running.append(start(pending.popleft(), free.pop(), args.tests_dir, work, pool))
        for job in list(running):
            if late and job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()
                killed += 1
            if job.proc.poll() is None:
                continue
            running.remove(job)
            cache = ptx_cache(pool, job.worker)
            if job.proc.returncode >= 0:
                link_new(cache, pool)
            else:  # stopped or crashed, perhaps while writing a kernel
                link_new(cache, pool, settled_before=time.time() - SETTLED_SECONDS)
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
    merge_junit(earlier + sorted(work.glob("chunk-*.xml")), args.junit)
    with args.log.open("wb") as log:
        for part in sorted(work.glob("chunk-*.log")):
            log.write(f"==> {part.name}\n".encode() + part.read_bytes())
    print(
        f"run_suite.py {args.tag}: {done - killed} of {total} chunks ran; at the "
        f"{args.deadline:.0f} s deadline {killed} were stopped and {not_started} not started; "
        f"{time.monotonic() - begin:.0f} s",
        flush=True,
    )
    return 1 if killed or not_started else 0


if __name__ == "__main__":
    sys.exit(main())
