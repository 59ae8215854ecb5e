"""Moved (see the import below); kept while code outside the tooling imports this name."""

from .queue.git import submodule_pin  # noqa: F401
