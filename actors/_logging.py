"""Logging set-up shared by the supervisor and actor processes."""

from __future__ import annotations

import logging
import os
import sys

from protocol import AwenError


def configure_logging(level: str = "info", *, actor: str | None = None) -> None:
    """Log to stderr, one line per record, naming the process's actor.

    ``AWEN_LOG`` (debug, info, warning, error) overrides the configured level.
    """
    level = os.environ.get("AWEN_LOG", level).upper()
    who = f"{actor}[{os.getpid()}]" if actor else f"awen[{os.getpid()}]"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level, logging.INFO))


def first_awen_error(exc: BaseException) -> AwenError | None:
    """The first `AwenError` inside an exception (group), if any."""
    if isinstance(exc, AwenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_awen_error(inner)
            if found is not None:
                return found
    return None


def describe_failure(exc: BaseException) -> str:
    """One line for the operator: the awen error if there is one, else the exception."""
    found = first_awen_error(exc)
    if found is not None:
        return str(found)
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
