"""Shared pytest configuration: server fixtures, the "no silent skips" rule in CI, and
the event loop's tasks printed before pytest-timeout stops a hung test."""

pytest_plugins = [
    "pytester",
    "tests.fix_bank",
    "tests.fix_ci",
    "tests.fix_hangs",
    "tests.fix_servers",
    "tests.fix_service",
]
