"""Tooling for the mlxr overlay, behind scripts/mlxr.py.

Layers, each importing only from itself and those before it: the base modules
here (errors, layout, progress); queue/, the patch queue; environment/, venvs,
dependencies and builds; verbs/, one module a command. payloads/ runs inside
the wheel's venv, apart from the rest. tests/tooling/test_layers.py holds the
layers to this; docs/contributing.md ("The tooling") says more.
"""
