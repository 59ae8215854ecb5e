#!/usr/bin/env python3
"""mlxr: upstream MLX plus the RMSNormFused overlay, as one command line.

Contributor loop: apply -> edit and commit in build/mlx-src -> export -> check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlxrtools.layout import default_layout  # noqa: E402


def cmd_apply(args: argparse.Namespace) -> int:
    from mlxrtools.queue.tree import apply

    apply(default_layout(), force=args.force)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mlxrtools.queue.tree import export

    changes = export(default_layout(), check_only=args.check)
    if changes and not args.check:
        print("mlxr export: wrote patches/ and overlay/:")
    for line in changes:
        print(line)
    if args.check:
        if changes:
            print("mlxr export --check: patches/ and overlay/ are out of date")
            return 1
        print("mlxr export --check: patches/ and overlay/ match build/mlx-src")
    elif not changes:
        print("mlxr export: nothing changed")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mlxrtools.queue.checks import check

    if args.against:
        return cmd_check_against(args.against)
    problems = check(default_layout())
    for problem in problems:
        print(f"mlxr check: {problem}")
    if problems:
        return 1
    print("mlxr check: series lint, overlay claims, exact apply and round trip all pass")
    return 0


def cmd_check_against(ref: str) -> int:
    from mlxrtools.queue.onto import CONFLICT
    from mlxrtools.queue.upstream import check_against, report

    outcomes = check_against(default_layout(), ref)
    print(f"mlxr check --against {ref}: the upstream-bound series")
    report(outcomes, ref)
    return 1 if any(o.status == CONFLICT for o in outcomes) else 0


def cmd_upstream_branch(args: argparse.Namespace) -> int:
    from mlxrtools.queue.upstream import upstream_branch

    return upstream_branch(default_layout(), args.onto, build=not args.no_build, jobs=args.jobs)


def cmd_bump(args: argparse.Namespace) -> int:
    from mlxrtools.queue.carry import bump, bump_continue

    if args.resume:
        return bump_continue(default_layout())
    if not args.tag:
        raise RuntimeError("name the tag to bump to, or pass --continue")
    return bump(default_layout(), args.tag)


def cmd_build(args: argparse.Namespace) -> int:
    from mlxrtools.environment.build import DepsOptions, build

    build(
        default_layout(),
        backend=args.backend,
        jobs=args.jobs,
        force=args.force,
        source=args.source,
        cuda_archs=args.cuda_archs,
        deps=DepsOptions(args.deps_from, args.nvtx_from_toolkit),
        wheel_dir=args.wheel_dir,
        label=not args.no_label,
    )
    return 0


def cmd_deps(args: argparse.Namespace) -> int:
    from mlxrtools.environment.dependencies import list_pins, pack_pins

    layout = default_layout()
    if args.pack is not None:
        for archive in pack_pins(layout, args.backend, args.pack, args.nvtx_from_toolkit):
            print(f"mlxr deps: wrote {archive}")
        return 0
    print(list_pins(layout, args.backend))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from mlxrtools.environment.testing import run_tests, run_tier

    if args.only:
        return run_tier(default_layout(), args.only, pytest_args=args.pytest_args, jobs=args.jobs)
    return run_tests(default_layout(), pytest_args=args.pytest_args, jobs=args.jobs)


def cmd_bench(args: argparse.Namespace) -> int:
    from mlxrtools.environment.bench_env import run_bench
    from mlxrtools.payloads.benchmark import case_argv

    device = args.device or ("gpu" if args.backend in ("metal", "cuda") else "cpu")
    return run_bench(
        default_layout(),
        device=device,
        backend=args.backend,
        wheel=args.wheel,
        case_args=case_argv(args),
        sweep=args.sweep,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlxr.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    a = sub.add_parser(
        "apply",
        help="apply patches/ and overlay/ to the pin in build/mlx-src",
        description="Create or update build/mlx-src: a git work tree of "
        "mlx_upstream at its pin, with one commit per patch of patches/series "
        "(git am, then the overlay files the patch claims). Unchanged inputs "
        "do nothing, and unchanged files keep their times.",
    )
    a.add_argument(
        "--force",
        action="store_true",
        help="discard commits or edits in build/mlx-src that were not exported",
    )
    a.set_defaults(func=cmd_apply)

    e = sub.add_parser(
        "export",
        help="regenerate patches/ and overlay/ from build/mlx-src",
        description="Run git format-patch with fixed flags over the commits "
        "of build/mlx-src after the pin: files a commit adds go to overlay/ "
        "(and its Overlay: field), edits go to its patch; series is rewritten.",
    )
    e.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if patches/ or overlay/ would change",
    )
    e.set_defaults(func=cmd_export)

    c = sub.add_parser(
        "check",
        help="lint the series and prove it applies exactly",
        description="Lint series and patch headers, check that every overlay "
        "file is claimed by exactly one patch and shadows no upstream file, "
        "apply on a pristine tree (no fuzz, no offset), export again and "
        "compare byte for byte, and check every registration site of "
        "RMSNormFused. With --against REF, instead apply the upstream-bound "
        "patches onto another upstream ref with a three-way merge and report each "
        "as clean, applied with merge, or conflicting (exit 1 on a conflict).",
    )
    c.add_argument(
        "--against",
        metavar="REF",
        help="drift canary: an upstream branch, tag or commit (e.g. main)",
    )
    c.set_defaults(func=cmd_check)

    u = sub.add_parser(
        "upstream-branch",
        help="prepare the upstream pull-request branch (never pushes)",
        description="Create build/upstream-branch on upstream's main (or --onto REF) "
        "with only the patches whose Upstream-Plan is upstream, their overlay files, "
        "and no vendor header fields; run upstream's formatting checks (clang-format, "
        "black, isort, cmake-format at the versions of its .pre-commit-config.yaml, "
        "from PyPI); build it and run python/tests/test_fast.py and our op tests; then "
        "print the commits and what a person must still do. It never pushes and never "
        "writes a PR description.",
    )
    u.add_argument("--onto", default="main", help="upstream ref (default: %(default)s)")
    u.add_argument("--no-build", action="store_true", help="skip the build and the tests")
    u.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    u.set_defaults(func=cmd_upstream_branch)

    m = sub.add_parser(
        "bump",
        help="move the mlx_upstream pin to another tag and carry the series over",
        description="Re-apply every patch onto TAG in build/mlx-src, with a three-way "
        "merge where needed. On a conflict it stops and says how to resolve it; "
        "`bump --continue` resumes. Then it moves the submodule pin and exports, so "
        "a bump is one reviewed commit plus any conflict fixes.",
    )
    m.add_argument("tag", nargs="?", help="upstream tag, e.g. v0.33.0")
    m.add_argument("--continue", dest="resume", action="store_true", help="resume after resolving")
    m.set_defaults(func=cmd_bump)

    b = sub.add_parser(
        "build",
        help="build the mlx wheel into wheels/",
        description="Apply the series and build a full mlx wheel "
        "(mlx-<version>+mlxr...) into wheels/, offline, with ccache.",
    )
    b.add_argument(
        "--backend",
        choices=("auto", "cpu", "metal", "cuda"),
        default="auto",
        help="auto: Metal on macOS, CPU elsewhere (default)",
    )
    b.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    b.add_argument("--force", action="store_true", help="rebuild even if the wheel is current")
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
    b.add_argument(
        "--no-label",
        action="store_true",
        help="with --source: no +mlxr version label (for an unpatched baseline tree)",
    )
    b.add_argument(
        "--deps-from",
        type=Path,
        metavar="DIR",
        help="take upstream's pinned dependencies from archives that `deps --pack DIR` "
        "wrote (for a machine with neither network nor mirrors)",
    )
    b.add_argument(
        "--nvtx-from-toolkit",
        action="store_true",
        help="use the CUDA toolkit's NVTX headers instead of NVTX at upstream's pin, "
        "where that release cannot be had (the build says so)",
    )
    b.set_defaults(func=cmd_build)

    d = sub.add_parser(
        "deps",
        help="list upstream's pinned dependencies, or pack them for an offline machine",
        description="Upstream's CMake fetches its dependencies at configure time. The build "
        "supplies each at exactly the tag or commit upstream pins, exported from git "
        "(a mirror through `git config url.<mirror>.insteadOf <url>` offline, GitHub "
        "online), checks its version header, and caches it in ~/.cache/mlxr/deps. "
        "Without --pack: list each pin and whether it can be had here.",
    )
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
    d.add_argument(
        "--nvtx-from-toolkit",
        action="store_true",
        help="leave NVTX out of the pack, for `build --nvtx-from-toolkit`",
    )
    d.set_defaults(func=cmd_deps)

    t = sub.add_parser(
        "test",
        help="build if needed, install into a fresh venv, run all tests",
        description="The test command of the README and CI: build the wheel "
        "if its inputs changed, install it into a fresh venv in build/, run "
        "upstream's python/tests against it and against an unpatched build of "
        "the same pin (cached), then run tests/ with pytest.",
    )
    t.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    t.add_argument(
        "--only",
        choices=("tooling", "metal", "wheel", "upstream"),
        help="one tier: tooling or metal (no wheel build, a light venv in build/tooling-venv), "
        "wheel (build, install, tests/wheel), upstream (build, upstream's suite against ours "
        "and the unpatched baseline); without it, everything, as CI runs it",
    )
    t.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments, after --")
    t.set_defaults(func=cmd_test)

    n = sub.add_parser(
        "bench",
        help="time rmsnorm_fused against its baselines",
        description="Build and install the wheel if needed, then time, in one run: "
        "forward: rmsnorm_fused, mx.fast.rms_norm, x + r followed by mx.fast.rms_norm, "
        "and a copy of the same bytes (NumPy on the CPU; on a CUDA GPU, PyTorch's "
        "device-to-device copy, with F.rms_norm and torch.compile of add + rms_norm, "
        "in a process of their own); backward: the gradients (mx.vjp) of the same "
        "MLX cases and PyTorch autograd of F.rms_norm and add + F.rms_norm, with "
        "peak memory; train: forward and backward of a stack of pre-norm blocks, "
        "fused against stock. Prints Markdown tables of medians, GB/s, shares of copy "
        "and ratios and writes them to build/results/bench-<device>.md.",
    )
    n.add_argument(
        "--backend",
        choices=("auto", "cpu", "metal", "cuda"),
        default="auto",
        help="the wheel to build and time, as for `build` (default: %(default)s); "
        "metal and cuda time the GPU",
    )
    n.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default=None,
        help="the stream to time on (default: gpu for --backend metal or cuda, else cpu)",
    )
    n.add_argument("--wheel", type=Path, help="time this wheel instead of building one")
    from mlxrtools.payloads.benchmark import add_case_options

    add_case_options(n)
    n.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    import subprocess

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        # UserError (mlxrtools.errors) and the other failures a user can act on: one
        # line each, no traceback. RuntimeError's subclasses include UserError.
        print(f"mlxr {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        command = " ".join(map(str, err.cmd)) if isinstance(err.cmd, list) else str(err.cmd)
        print(f"mlxr {args.verb}: error: `{command}` exited with {err.returncode}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
