"""Errors a user can fix end in one line that says so, never in a traceback."""

import argparse
import importlib.util
import subprocess
from pathlib import Path

import pytest
from mlxrtools.errors import UserError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mlxr.py"


def load_cli():
    # Loaded by path: the installed `mlxr` package would shadow a plain import.
    spec = importlib.util.spec_from_file_location("mlxr_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (UserError("the mirror has no v9", fix="update the mirror"),
         "mlxr deps: error: the mirror has no v9 (update the mirror)"),
        (FileNotFoundError("no such file: x.whl"), "mlxr deps: error: no such file: x.whl"),
        (subprocess.CalledProcessError(3, ["git", "fetch"]),
         "mlxr deps: error: `git fetch` exited with 3"),
    ],
)  # fmt: skip
def test_errors_are_one_line(monkeypatch, capsys, error, line):
    cli = load_cli()

    def fail(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_deps", fail)  # parser() looks it up when called
    assert cli.main(["deps"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == line
    assert "Traceback" not in err
