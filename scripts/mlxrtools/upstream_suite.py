"""Moved (see the import below); kept while code outside the tooling imports this name."""

from .environment.upstream_suite import SuiteResult, compare, parse_junit  # noqa: F401
