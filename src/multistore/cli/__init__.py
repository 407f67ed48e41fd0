"""The ``multistore`` command. Nothing imports this package; it sits on top."""

from multistore.cli._app import app
from multistore.cli._main import main

__all__ = ["app", "main"]
