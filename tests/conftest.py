"""Shared pytest configuration: server fixtures and the "no silent skips" rule in CI."""

pytest_plugins = [
    "pytester",
    "tests.fix_bank",
    "tests.fix_ci",
    "tests.fix_servers",
    "tests.fix_service",
]
