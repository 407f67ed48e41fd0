"""Run multistore (or a Python script) as a user would: a subprocess in a given folder,
without the caller's MULTISTORE_CONFIG, output captured as text."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_python(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``cwd``; ``env`` adds to (or overrides) the inherited environment."""
    full_env = {k: v for k, v in os.environ.items() if k != "MULTISTORE_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``multistore ARGS`` in ``cwd``."""
    return run_python(["-m", "multistore", *args], cwd=cwd, env=env, timeout=timeout)
