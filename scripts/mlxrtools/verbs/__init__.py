"""One module per mlxr.py verb, each a thin `run(...) -> Result` over the lower layers.

A verb never imports another verb: what two verbs share lives in queue/ or
environment/. A verb may say progress lines while it works (mlxrtools.progress);
its final report is the Result it returns, which mlxr.py prints.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What a verb did: its exit code, what mlxr.py prints as `mlxr VERB: message`
    for each message, then the listing as it is (tables, file lists, commands)."""

    code: int = 0
    messages: tuple[str, ...] = ()
    listing: tuple[str, ...] = ()
