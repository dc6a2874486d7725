"""User-facing errors: the CLI prints them as one line and exits with code 2, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input (file, option, name). Message is one line."""


class DataError(UserError):
    """A problem with a dataset file. The message names the file and the problem."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for a close match, else ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """Build the standard 'unknown X' error with a suggestion and the list of valid names."""
    choices = sorted(choices)
    return UserError(f"unknown {kind} '{name}'{suggest(name, choices)}; choose from: {', '.join(choices)}")


def one_line(e: BaseException, limit: int | None = None) -> str:
    """The one-line form of an error's message, cut to `limit` characters; never fails.

    Usually the first non-blank line. A DataLoader worker re-raises its error with the worker's
    traceback as the message; its last line ('pkg.DataError: file: problem') names the error's own
    type, and then what follows the type is kept. Some errors carry no message at all (torch.load of
    a 0-byte file raises a bare EOFError): an empty message gives the exception's type name.
    """
    try:
        text = str(e)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the original error
        text = ""
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    line = lines[0] if lines else type(e).__name__
    if len(lines) > 1:
        head, sep, rest = lines[-1].partition(": ")
        if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1] == type(e).__name__:
            line = rest
    return line[:limit] if limit is not None else line

