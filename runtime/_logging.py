"""Logging: the set-up shared by the supervisor and actor processes, bounded records, rate-limited warnings."""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

import trio

from protocol import AwenError

MAX_LOG_RECORD = 8192
"""The most characters one log record writes, traceback included: the backstop behind every
place that quotes what a client sent (those cut it far shorter)."""


class BoundedFormatter(logging.Formatter):
    """A formatter whose records are at most ``limit`` characters: the start, a note of the cut, the end.

    The end is kept because a traceback's last line names the exception.
    """

    def __init__(self, fmt: str, datefmt: str, *, limit: int = MAX_LOG_RECORD) -> None:
        super().__init__(fmt, datefmt)
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if len(text) <= self.limit:
            return text
        note = f" ... [{len(text) - self.limit + 80} characters cut] ... "
        tail = min(2000, self.limit // 4)
        head = self.limit - tail - len(note)
        return text[:head] + note + text[-tail:]


class RateLimitedLog:
    """Log the first few occurrences, then one summary per interval: for what a client can repeat at will."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, interval: float = 10.0) -> None:
        self._log = logger
        self._burst = burst
        self._interval = interval
        self._count = 0
        self._suppressed = 0
        self._window_start = -math.inf

    def warning(self, msg: str, *args: Any) -> None:
        now = trio.current_time()
        if now - self._window_start > self._interval:
            if self._suppressed:
                self._log.warning("... and %d more like it in the last %.0f s", self._suppressed, self._interval)
            self._window_start, self._count, self._suppressed = now, 0, 0
        self._count += 1
        if self._count <= self._burst:
            self._log.warning(msg, *args)
        else:
            self._suppressed += 1


def configure_logging(level: str = "info", *, actor: str | None = None) -> None:
    """Log to stderr, one line per record (at most `MAX_LOG_RECORD` characters), naming the process's actor.

    ``AWEN_LOG`` (debug, info, warning, error) overrides the configured level.
    """
    level = os.environ.get("AWEN_LOG", level).upper()
    who = f"{actor}[{os.getpid()}]" if actor else f"awen[{os.getpid()}]"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(BoundedFormatter(f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
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
