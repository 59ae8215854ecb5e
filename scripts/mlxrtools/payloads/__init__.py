"""Code that runs inside the venv of the wheel it measures: the bench and its baselines."""
