"""mlxr.py's one output format: results, progress lines, and errors a user can fix."""

import argparse
import importlib.util
import logging
import subprocess
from pathlib import Path

import pytest
from mlxrtools.errors import UserError
from mlxrtools.progress import detail, say
from mlxrtools.verbs import Result

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mlxr.py"


@pytest.fixture(autouse=True)
def progress_restored():
    """main() sets up the progress lines for its verb; later tests get the logger back."""
    logger = logging.getLogger("mlxr")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def load_cli():
    # Loaded by path: the installed `mlxr` package would shadow a plain import.
    spec = importlib.util.spec_from_file_location("mlxr_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_deps(monkeypatch, body) -> int:  # type: ignore[no-untyped-def]
    """mlxr.py deps, with `body(args)` standing in for the verb."""
    cli = load_cli()
    monkeypatch.setattr(cli, "cmd_deps", body)  # parser() looks it up when called
    return cli.main(["deps"])


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (UserError("the mirror has no v9", fix="update the mirror"),
         "mlxr deps: error: the mirror has no v9 (update the mirror)"),
        (subprocess.CalledProcessError(3, ["git", "fetch"]),
         "mlxr deps: error: `git fetch` exited with 3"),
    ],
)  # fmt: skip
def test_errors_a_user_can_fix_are_one_line(monkeypatch, capsys, error, line):
    def fail(args: argparse.Namespace) -> Result:
        raise error

    assert run_deps(monkeypatch, fail) == 2
    err = capsys.readouterr().err
    assert err.strip() == line
    assert "Traceback" not in err


def test_a_bug_is_not_dressed_up_as_a_users_error(monkeypatch):
    def bug(args: argparse.Namespace) -> Result:
        raise KeyError("nvtx3")

    with pytest.raises(KeyError):
        run_deps(monkeypatch, bug)


def test_results_and_progress_share_one_format(monkeypatch, capsys):
    def verb(args: argparse.Namespace) -> Result:
        say("exporting fmt")  # as a lower layer would, not knowing the verb
        detail("fmt: done")
        return Result(1, ("wrote a.tar.xz",), ("| a table |",))

    assert run_deps(monkeypatch, verb) == 1
    assert capsys.readouterr().out.splitlines() == [
        "mlxr deps: exporting fmt",
        "  fmt: done",
        "mlxr deps: wrote a.tar.xz",
        "| a table |",
    ]
