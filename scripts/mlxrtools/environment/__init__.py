"""The environment: venvs and pip, upstream's pinned dependencies, the builds of the wheels."""
