"""Progress lines during long work.

A module says what it is doing; it never names the verb that called it, since
the same build runs under `build`, `test` and `bench`. mlxr.py decides how the
lines look (`mlxr VERB: ...`) by installing `show_as`; without it, as in the
tests or a library call, the lines go to logging and nowhere else.
"""

from __future__ import annotations

import logging
import sys

_LOG = logging.getLogger("mlxr")


def say(message: str) -> None:
    """A step of the work, shown as `mlxr VERB: message`."""
    _LOG.info(message)


def detail(message: str) -> None:
    """A line under the last step (one patch's outcome, a compiler's progress): indented."""
    _LOG.info(message, extra={"detail": True})


class _VerbLines(logging.Handler):
    def __init__(self, verb: str) -> None:
        super().__init__(logging.INFO)
        self.verb = verb

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        line = f"  {text}" if getattr(record, "detail", False) else f"mlxr {self.verb}: {text}"
        # sys.stdout at the time of the line (pytest swaps it), flushed so that the
        # lines keep their place among a child process's output.
        print(line, file=sys.stdout, flush=True)


def show_as(verb: str) -> None:
    """Print progress lines on stdout, under `verb`, from now on."""
    for handler in [h for h in _LOG.handlers if isinstance(h, _VerbLines)]:
        _LOG.removeHandler(handler)
    _LOG.addHandler(_VerbLines(verb))
    _LOG.setLevel(logging.INFO)
    _LOG.propagate = False
