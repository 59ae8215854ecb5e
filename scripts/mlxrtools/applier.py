"""Moved (see the import below); kept while code outside the tooling imports this name."""

from .queue.apply import add_worktree, commit_series, remove_worktree  # noqa: F401
