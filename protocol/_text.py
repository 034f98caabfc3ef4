"""Text a client chose, cut to a length before it goes into a message, an error reply or a log line."""

from __future__ import annotations


def clip(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and how much was cut, in ``limit``.

    A 4 MB name a client sent must not become a 4 MB error reply or log line;
    what is kept says how long the original was.
    """
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 0)
    return f"{text[:keep]}... ({len(text) - keep} more characters)"[:limit]
