"""The ``multistore`` entry point: the app of :mod:`._app`, run so that

* a bare ``multistore`` (or ``multistore lab``) prints its help and exits 0;
* a usage error (an unknown command or option, a missing or malformed argument) is
  one line, ``error[command-line]: …`` with the command's ``--help`` named, and exit
  code 2 (see docs/errors.md);
* a flag shows no value placeholder in the help (``--json``, not ``--json <bool>``).

Commands added to the app later get all three without doing anything.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from multistore.cli._app import app
from multistore.errors import ErrorCode

__all__ = ["main"]


def _tidy(command: Any, name: str, parent: Any = None) -> None:
    """Hide the value placeholder of every flag (``--help`` too), in every command."""
    ctx = command.context_class(
        command, info_name=name, parent=parent, **getattr(command, "context_settings", {})
    )
    params = list(command.params)
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if getattr(param, "is_flag", False) and not getattr(param, "count", False):
            param.metavar = ""
    if hasattr(command, "list_commands"):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None:
                _tidy(sub, sub_name, ctx)


def _is_click_error(exc: BaseException) -> bool:
    """A usage error of the command-line parser (click's, vendored or not)."""
    return hasattr(exc, "exit_code") and hasattr(exc, "format_message")


def _usage_line(exc: Any) -> None:
    ctx = getattr(exc, "ctx", None)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    name, possible = getattr(exc, "option_name", None), getattr(exc, "possibilities", None)
    if name and possible:
        message = f"no such option {name}; did you mean {' or '.join(sorted(possible))}?"
    else:
        message = " ".join(str(exc.format_message()).split())
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    code = ErrorCode.COMMAND_LINE
    err.print(f"[bold red]error[/]{escape(f'[{code.slug}]: {message}{where}')}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``multistore`` with ``argv`` (default: the process's arguments) and exit."""
    command = typer.main.get_command(app)
    _tidy(command, "multistore")
    try:
        result = command.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="multistore",
            standalone_mode=False,
        )
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            text = str(exc.format_message())  # type: ignore[attr-defined]
            if text.strip():  # plain help; the rich help printed itself
                print(text)
            sys.exit(0)
        if type(exc).__name__ == "Abort" or isinstance(exc, typer.Abort):
            Console(stderr=True).print("aborted")
            sys.exit(1)
        if not _is_click_error(exc):
            raise
        _usage_line(exc)
        sys.exit(int(ErrorCode.COMMAND_LINE))
    sys.exit(result if isinstance(result, int) else 0)
