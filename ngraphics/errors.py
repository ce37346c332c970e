"""User-facing errors: one line that says where, what was expected, what was found, and the fix.

The CLI prints `NgraphicsError` messages without a stack trace; everything else is a bug and keeps its trace.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NgraphicsError(Exception):
    """A user's mistake (bad file, bad config key, bad value). The message is one complete line."""


class ConfigError(NgraphicsError, ValueError):
    """A config key or value that is not allowed."""


class DataError(NgraphicsError, ValueError):
    """A data file that is missing, unreadable or malformed."""


def nearest(name: str, options: Iterable[str]) -> str | None:
    """The closest option to `name` (case-insensitive), or None if nothing is close."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else None


def unknown_key_message(where: str, key: str, kind: str, options: Iterable[str]) -> str:
    """`where: key is not a <kind> key (did you mean x?)`, or the list of valid keys when none is close."""
    options = sorted(options)
    guess = nearest(key, options)
    hint = f"did you mean {guess}?" if guess else "valid keys: " + ", ".join(options)
    return f"{where}: {key} is not a {kind} key ({hint})"


def choice_message(where: str, value: object, options: Iterable[str]) -> str:
    """`where: 'x' is not one of a, b, c (did you mean b?)`."""
    options = list(options)
    guess = nearest(str(value), options)
    hint = f" (did you mean {guess}?)" if guess else ""
    return f"{where}: {value!r} is not one of {', '.join(options)}{hint}"
