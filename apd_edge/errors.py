"""User-facing errors and name suggestions (no heavy imports: the runtime uses this too)."""

from __future__ import annotations

import difflib
from typing import Iterable


class ApdError(Exception):
    """An error caused by the user's input; the CLI prints its message on one line and exits 2."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> ApdError:
    """Build the standard error for an unknown registry name."""
    choices = sorted(choices)
    return ApdError(f"unknown {kind} '{name}'{suggest(name, choices)}; available: {', '.join(choices)}")
