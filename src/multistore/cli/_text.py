"""Text for the terminal.

Every console the CLI prints with reads no markup: text from users, stores and error
messages is shown as it is, so a hint such as ``pip install 'multistore[redis]'`` or
an IPv6 host ``[::1]`` keeps its brackets. The few words the CLI colours itself are
:class:`rich.text.Text` objects made with :func:`styled` and :func:`joined`.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

__all__ = ["console", "joined", "styled"]


def console(*, stderr: bool = False, soft_wrap: bool = False) -> Console:
    """A console that prints strings literally (no markup)."""
    return Console(stderr=stderr, markup=False, soft_wrap=soft_wrap)


def styled(text: object, style: str) -> Text:
    """``text`` (any value, shown with ``str``) in ``style``, e.g. ``"bold red"``."""
    return Text(str(text), style=style)


def joined(*parts: str | Text) -> Text:
    """Plain strings and styled pieces as one text."""
    return Text.assemble(*parts)
