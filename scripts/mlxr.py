#!/usr/bin/env python3
"""mlxr: upstream MLX plus the RMSNormFused overlay, as one command line.

Contributor loop: apply -> edit and commit in build/mlx-src -> export -> check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlxrtools import progress  # noqa: E402
from mlxrtools.errors import UserError  # noqa: E402
from mlxrtools.layout import default_layout  # noqa: E402
from mlxrtools.verbs import Result  # noqa: E402

# One command a verb: its docstring is its help (the first line in the list of verbs, the
# rest for `VERB --help`), and it imports the verb's module only when the verb runs, so
# that --help stays quick.


def cmd_apply(args: argparse.Namespace) -> Result:
    """apply patches/ and overlay/ to the pin in build/mlx-src

    Create or update build/mlx-src: a git work tree of mlx_upstream at its pin, with one commit
    per patch of patches/series (git am, then the overlay files the patch claims). Unchanged
    inputs do nothing, and unchanged files keep their times.
    """
    from mlxrtools.verbs import apply

    return apply.run(default_layout(), force=args.force)


def cmd_export(args: argparse.Namespace) -> Result:
    """regenerate patches/ and overlay/ from build/mlx-src

    Run git format-patch with fixed flags over the commits of build/mlx-src after the pin: files
    a commit adds go to overlay/ (and its Overlay: field), edits go to its patch; series is
    rewritten.
    """
    from mlxrtools.verbs import export

    return export.run(default_layout(), check_only=args.check)


def cmd_check(args: argparse.Namespace) -> Result:
    """lint the series and prove it applies exactly

    Lint series and patch headers, check that every overlay file is claimed by exactly one patch
    and shadows no upstream file, apply on a pristine tree (no fuzz, no offset), export again
    and compare byte for byte, and check every registration site of RMSNormFused. With --against
    REF, instead apply the upstream-bound patches onto another upstream ref with a three-way
    merge and report each as clean, applied with merge, or conflicting (exit 1 on a conflict).
    """
    from mlxrtools.verbs import check

    return check.run(default_layout(), against=args.against)


def cmd_upstream_branch(args: argparse.Namespace) -> Result:
    """prepare the upstream pull-request branch (never pushes)

    Create build/upstream-branch on upstream's main (or --onto REF) with only the patches whose
    Upstream-Plan is upstream, their overlay files, and no vendor header fields; run upstream's
    formatting checks (clang-format, black, isort, cmake-format at the versions of its
    .pre-commit-config.yaml, from PyPI); build it and run python/tests/test_fast.py and our op
    tests; then print the commits and what a person must still do. It never pushes and never
    writes a PR description.
    """
    from mlxrtools.verbs import upstream_branch

    return upstream_branch.run(default_layout(), args.onto, build=not args.no_build, jobs=args.jobs)


def cmd_bump(args: argparse.Namespace) -> Result:
    """move the mlx_upstream pin to another tag and carry the series over

    Re-apply every patch onto TAG in build/mlx-src, with a three-way merge where needed. On a
    conflict it stops and says how to resolve it; `bump --continue` resumes. Then it moves the
    submodule pin and exports, so a bump is one reviewed commit plus any conflict fixes.
    """
    from mlxrtools.verbs import bump

    return bump.run(default_layout(), args.tag, resume=args.resume)


def cmd_build(args: argparse.Namespace) -> Result:
    """build the mlx wheel into wheels/

    Apply the series and build a full mlx wheel (mlx-<version>+mlxr...) into wheels/, offline,
    with ccache.
    """
    from mlxrtools.environment.build import BuildOptions
    from mlxrtools.environment.dependencies import DepsOptions
    from mlxrtools.verbs import build

    options = BuildOptions(
        backend=args.backend,
        jobs=args.jobs,
        force=args.force,
        source=args.source,
        cuda_archs=args.cuda_archs,
        deps=DepsOptions(args.deps_from, args.nvtx_from_toolkit),
        wheel_dir=args.wheel_dir,
        label=not args.no_label,
    )
    return build.run(default_layout(), options)


def cmd_deps(args: argparse.Namespace) -> Result:
    """list upstream's pinned dependencies, or pack them for an offline machine

    Upstream's CMake fetches its dependencies at configure time. The build supplies each at
    exactly the tag or commit upstream pins, exported from git (a mirror through `git config
    url.<mirror>.insteadOf <url>` offline, GitHub online), checks its version header, and caches
    it in ~/.cache/mlxr/deps. Without --pack: list each pin and whether it can be had here.
    """
    from mlxrtools.verbs import deps

    return deps.run(default_layout(), args.backend, args.pack, args.nvtx_from_toolkit)


def cmd_test(args: argparse.Namespace) -> Result:
    """build if needed, install into a fresh venv, run all tests

    The test command of the README and CI: build the wheel if its inputs changed, install it
    into a fresh venv in build/, run upstream's python/tests against it and against an unpatched
    build of the same pin (cached), then run tests/ with pytest.
    """
    from mlxrtools.verbs import test

    return test.run(default_layout(), args.only, pytest_args=args.pytest_args, jobs=args.jobs)


def cmd_bench(args: argparse.Namespace) -> Result:
    """time rmsnorm_fused against its baselines

    Build and install the wheel if needed, then time, in one run: forward: rmsnorm_fused,
    mx.fast.rms_norm, x + r followed by mx.fast.rms_norm, the post-norm and sandwich forms (with
    and without Gemma's weight offset) against the chains of ops they replace, and a copy of the
    same bytes (NumPy on the CPU; on a CUDA GPU, PyTorch's device-to-device copy, with
    F.rms_norm and torch.compile of add + rms_norm, in a process of their own); backward: the
    gradients (mx.vjp) of the same MLX cases and PyTorch autograd of F.rms_norm and add +
    F.rms_norm, with peak memory; train: forward and backward of a stack of pre-norm blocks,
    fused against stock. Opt-in cases (--cases decode,models): decode: µs per call of x + r,
    mx.fast.rms_norm, rmsnorm_fused, x + r then rms_norm and rmsnorm_fused(residual), each in a
    chain of dependent calls at decode shapes, with graph construction apart and the per-call
    targets; models: prefill and decode tokens/s of mlx-lm models at real shapes with random
    weights (small ones on the CPU), bfloat16 and 4-bit, stock against mlxr.fuse, in shuffled
    turns, with the median ratio's 95% interval and a verdict. Prints Markdown tables of
    medians, GB/s, shares of copy and ratios and writes them to build/results/bench-<device>.md
    (the models case's raw numbers and chart to bench-models-<device>.json and .png).
    """
    from mlxrtools.payloads.bench_options import from_args
    from mlxrtools.verbs import bench

    device = args.device or ("gpu" if args.backend in ("metal", "cuda") else "cpu")
    return bench.run(default_layout(), args.backend, args.wheel, from_args(args, device))


Subparsers = argparse._SubParsersAction  # argparse names no public type for it
Command = Callable[[argparse.Namespace], Result]


def add_verb(sub: Subparsers, name: str, command: Command) -> argparse.ArgumentParser:
    """The verb's subparser: its one-line help and its description are the first line
    and the rest of the command's docstring (argparse reflows them)."""
    summary, _, description = (command.__doc__ or "").partition("\n")
    p = sub.add_parser(name, help=summary.strip(), description=description.strip())
    p.set_defaults(func=command)
    return p


def add_flag(p: argparse.ArgumentParser, flag: str, text: str, **kwargs: str) -> None:
    p.add_argument(flag, action="store_true", help=text, **kwargs)


def add_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")


def add_backend(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--backend", choices=("auto", "cpu", "metal", "cuda"), default="auto", help=text)


def apply_parser(sub: Subparsers) -> None:
    a = add_verb(sub, "apply", cmd_apply)
    add_flag(a, "--force", "discard commits or edits in build/mlx-src that were not exported")


def export_parser(sub: Subparsers) -> None:
    e = add_verb(sub, "export", cmd_export)
    add_flag(e, "--check", "change nothing; exit 1 if patches/ or overlay/ would change")


def check_parser(sub: Subparsers) -> None:
    c = add_verb(sub, "check", cmd_check)
    c.add_argument(
        "--against",
        metavar="REF",
        help="drift canary: an upstream branch, tag or commit (e.g. main)",
    )


def upstream_branch_parser(sub: Subparsers) -> None:
    u = add_verb(sub, "upstream-branch", cmd_upstream_branch)
    u.add_argument("--onto", default="main", help="upstream ref (default: %(default)s)")
    add_flag(u, "--no-build", "skip the build and the tests")
    add_jobs(u)


def bump_parser(sub: Subparsers) -> None:
    m = add_verb(sub, "bump", cmd_bump)
    m.add_argument("tag", nargs="?", help="upstream tag, e.g. v0.33.0")
    add_flag(m, "--continue", "resume after resolving", dest="resume")


def build_parser(sub: Subparsers) -> None:
    b = add_verb(sub, "build", cmd_build)
    add_backend(b, "auto: Metal on macOS, CPU elsewhere (default)")
    add_jobs(b)
    add_flag(b, "--force", "rebuild even if the wheel is current")
    b.add_argument(
        "--cuda-archs",
        default="native",
        help="CUDA architectures for --backend cuda, e.g. 90a-real (default: the GPU here)",
    )
    b.add_argument(
        "--source",
        type=Path,
        help="build this prepared MLX tree as it is (a `git archive` of build/mlx-src "
        "carried to a machine without the submodule) instead of applying the series",
    )
    b.add_argument(
        "--wheel-dir",
        type=Path,
        metavar="DIR",
        help="write the wheel here instead of wheels/ (its other mlx wheels are removed)",
    )
    add_flag(
        b, "--no-label", "with --source: no +mlxr version label (for an unpatched baseline tree)"
    )
    b.add_argument(
        "--deps-from",
        type=Path,
        metavar="DIR",
        help="take upstream's pinned dependencies from archives that `deps --pack DIR` "
        "wrote (for a machine with neither network nor mirrors)",
    )
    add_flag(
        b,
        "--nvtx-from-toolkit",
        "use the CUDA toolkit's NVTX headers instead of NVTX at upstream's pin, "
        "where that release cannot be had (the build says so)",
    )


def deps_parser(sub: Subparsers) -> None:
    d = add_verb(sub, "deps", cmd_deps)
    d.add_argument(
        "--backend",
        choices=("cpu", "cuda"),
        default="cpu",
        help="whose dependencies (default: cpu)",
    )
    d.add_argument(
        "--pack",
        type=Path,
        metavar="DIR",
        help="write one .tar.xz per pinned source into DIR, for `build --deps-from DIR`",
    )
    add_flag(
        d, "--nvtx-from-toolkit", "leave NVTX out of the pack, for `build --nvtx-from-toolkit`"
    )


def test_parser(sub: Subparsers) -> None:
    t = add_verb(sub, "test", cmd_test)
    add_jobs(t)
    t.add_argument(
        "--only",
        choices=("tooling", "metal", "cuda", "wheel", "upstream"),
        help="one tier: tooling, metal or cuda (no wheel build, a light venv in "
        "build/tooling-venv; cuda: the CUDA kernels' PTX, where nvcc is on PATH), "
        "wheel (build, install, tests/wheel), upstream (build, upstream's suite against ours "
        "and the unpatched baseline); without it, everything, as CI runs it",
    )
    t.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments, after --")


def bench_parser(sub: Subparsers) -> None:
    from mlxrtools.payloads.bench_options import add_arguments

    n = add_verb(sub, "bench", cmd_bench)
    add_backend(
        n,
        "the wheel to build and time, as for `build` (default: %(default)s); "
        "metal and cuda time the GPU",
    )
    n.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default=None,
        help="the stream to time on (default: gpu for --backend metal or cuda, else cpu)",
    )
    n.add_argument("--wheel", type=Path, help="time this wheel instead of building one")
    add_arguments(n)


VERB_PARSERS = (
    apply_parser,
    export_parser,
    check_parser,
    upstream_branch_parser,
    bump_parser,
    build_parser,
    deps_parser,
    test_parser,
    bench_parser,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlxr.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb_parser in VERB_PARSERS:
        verb_parser(sub)
    return p


def show(verb: str, result: Result) -> int:
    """A verb's result, in the one format every verb shares."""
    for message in result.messages:
        print(f"mlxr {verb}: {message}")
    for line in result.listing:
        print(line)
    return result.code


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    progress.show_as(args.verb)
    try:
        return show(args.verb, args.func(args))
    except UserError as err:
        # Something the user can fix: one line that says how, no traceback.
        print(f"mlxr {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        # A tool we ran failed; it has said why above.
        command = " ".join(map(str, err.cmd)) if isinstance(err.cmd, list) else str(err.cmd)
        print(f"mlxr {args.verb}: error: `{command}` exited with {err.returncode}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
