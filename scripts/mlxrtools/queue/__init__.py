"""The patch queue: git, patch files, the series, apply and export, and its checks."""
