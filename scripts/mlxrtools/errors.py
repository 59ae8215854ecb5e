"""Errors a user can fix, reported as one line that says how, without a traceback."""

from __future__ import annotations


class UserError(RuntimeError):
    """Something the person running mlxr can fix; `fix` says how, when we know."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} ({self.fix})" if self.fix else message
