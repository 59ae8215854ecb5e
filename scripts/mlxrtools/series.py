"""Moved (see the import below); kept while code outside the tooling imports this name."""

from .queue.series import load_patches  # noqa: F401
