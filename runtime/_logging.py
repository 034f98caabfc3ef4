"""Logging: the set-up shared by the supervisor and actor processes, bounded records, rate-limited warnings.

Records are text lines or JSON objects (decision 0015 §3), and name the job
and the trace of what the logging task handles when it handles one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

import trio

from protocol import AwenError

from ._trace import current_job, current_trace

MAX_LOG_RECORD = 8192
"""The most characters one log record writes, traceback included: the backstop behind every
place that quotes what a client sent (those cut it far shorter)."""


def clip_middle(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its start, a note of the cut, its end.

    The end is kept because a traceback's last line names the exception.
    """
    if len(text) <= limit:
        return text
    note = f" ... [{len(text) - limit + 80} characters cut] ... "
    tail = min(2000, limit // 4)
    head = limit - tail - len(note)
    if head < tail:  # too short for a note
        return text[:limit]
    return text[:head] + note + text[-tail:]


class ContextFilter(logging.Filter):
    """Puts the job and trace of what the logging task handles (`runtime._trace`) on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = current_job.get()
        record.trace = current_trace.get()
        return True


class BoundedFormatter(logging.Formatter):
    """A formatter whose records are at most ``limit`` characters: the start, a note of the cut, the end.

    A record about a job (`ContextFilter`) whose message does not name it ends
    in `` [job=JOB]``, so that ``grep JOB`` finds it.
    """

    def __init__(self, fmt: str, datefmt: str, *, limit: int = MAX_LOG_RECORD) -> None:
        super().__init__(fmt, datefmt)
        self.limit = limit

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        job = getattr(record, "job", None)
        if job is not None and job not in record.message:
            text += f" [job={job}]"
        return text

    def format(self, record: logging.LogRecord) -> str:
        return clip_middle(super().format(record), self.limit)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, at most ``limit`` characters (its ``message`` and ``exc`` cut to fit).

    Keys: ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``actor``,
    ``pid``, ``logger``, ``message``; ``job`` and ``trace`` when known
    (`ContextFilter`); ``exc``, the traceback, when there is one.
    """

    def __init__(self, actor: str, *, limit: int = MAX_LOG_RECORD) -> None:
        super().__init__()
        self.actor = actor
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "actor": self.actor,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job, trace = getattr(record, "job", None), getattr(record, "trace", None)
        if job is not None:
            fields["job"] = job
        if trace is not None:
            fields["trace"] = trace
        exc = self._exception_text(record)
        if exc:
            fields["exc"] = exc
        return self._bounded(fields)

    def _exception_text(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            parts.append(record.exc_text)
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)

    def _bounded(self, fields: dict[str, Any]) -> str:
        line = _dumps(fields)
        if len(line) <= self.limit:
            return line
        cut: list[str] = [key for key in ("message", "exc") if key in fields]
        fixed = len(_dumps({k: v for k, v in fields.items() if k not in cut})) + 40
        budget = self.limit - fixed
        for _ in range(3):  # escapes may be spread unevenly: a second pass, with less, nearly never
            sizes = {key: len(_dumps(fields[key])) for key in cut}
            shares = _shares(sizes, budget)
            for key in cut:
                if sizes[key] > shares[key]:
                    text = fields[key]
                    fields[key] = clip_middle(text, shares[key] * len(text) // sizes[key])
            line = _dumps(fields)
            if len(line) <= self.limit:
                return line
            budget = budget * 3 // 4
        fields.pop("exc", None)  # cannot happen: still, a line that parses, with the start of the message
        fields["message"] = fields["message"][:200]
        return _dumps(fields)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """How much of ``budget`` each field may take: an equal share, what a short one leaves over to the other."""
    budget = max(budget, 0)
    if len(sizes) < 2:
        return dict.fromkeys(sizes, budget)
    small = min(sizes, key=lambda key: sizes[key])
    share = min(sizes[small], budget // 2)
    return {key: share if key == small else budget - share for key in sizes}


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


LOG_FORMATS = ("text", "json")


def configure_logging(level: str = "info", *, actor: str | None = None, fmt: str = "text") -> None:
    """Log to stderr, one line per record (at most `MAX_LOG_RECORD` characters), naming the process's actor.

    ``fmt`` is ``text`` (for a person at a terminal) or ``json`` (one object
    per line, `JsonFormatter`: for a log collector, or ``jq``). ``AWEN_LOG``
    (debug, info, warning, error) overrides the configured level, and
    ``AWEN_LOG_FORMAT`` (text, json) the format.
    """
    level = os.environ.get("AWEN_LOG", level).upper()
    fmt = os.environ.get("AWEN_LOG_FORMAT", fmt).strip().lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(actor or "awen"))
    else:
        who = f"{actor}[{os.getpid()}]" if actor else f"awen[{os.getpid()}]"
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
