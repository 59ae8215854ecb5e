"""Moved (see the import below); kept while code outside the tooling imports this name."""

from .queue.apply import commit_series  # noqa: F401
from .queue.git import add_worktree, remove_worktree  # noqa: F401
