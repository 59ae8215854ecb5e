"""Tooling for the mlxr overlay: apply, export, check, build, test, bench."""
