"""Moved (see the import below); kept while code outside the tooling imports this name."""

from .environment.venv import install_wheel, mlx_file_owners  # noqa: F401
