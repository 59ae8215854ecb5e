"""One module per mlxr.py verb."""
