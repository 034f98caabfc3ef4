"""Which method answers which message: the `handles` and `subscribes` marks, and the table they fill.

A handler takes ``(body, envelope)``. A plain function runs inline, at once;
an ``async def`` runs as a task of its own (`runtime._mailbox` does both).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from protocol import Catalog, Envelope, Message, Reply

Handler = Callable[[Any, Envelope], Awaitable[Reply | None] | Reply | None]
"""Answers a request (returns its reply, or raises an `AwenError`) or takes a notice."""

EventHandler = Callable[[Any, Envelope], Awaitable[None] | None]
"""Takes an event."""

F = TypeVar("F", bound=Callable[..., Any])


def handles(*types: type[Message]) -> Callable[[F], F]:
    """Mark a method as the handler of these message types.

    The method takes ``(body, envelope)``; for a request it returns the reply
    (``None`` means `Ok` where the request's reply type is `Ok`) or raises an
    `AwenError`, which becomes a ``sys.error`` reply with its code.

    A plain (non-async) method runs inline, at once; it may return an awaitable
    instead of the reply when only some requests need to wait (a write that
    also commits): the awaitable then runs as a task, like an async handler.
    """

    def mark(fn: F) -> F:
        fn._awen_handles = types  # type: ignore[attr-defined]
        return fn

    return mark


def subscribes(*prefixes: str) -> Callable[[F], F]:
    """Mark a method as a subscriber to events whose type starts with a prefix."""

    def mark(fn: F) -> F:
        fn._awen_subscribes = prefixes  # type: ignore[attr-defined]
        return fn

    return mark


def marked_methods(obj: object) -> tuple[list[tuple[type[Message], Handler]], list[tuple[str, EventHandler]]]:
    """What `handles` and `subscribes` marked on ``obj``'s class and its bases, bound to ``obj``.

    The class's own methods come before its bases' (so that a subclass's
    handler is met first); a method overridden without a mark counts not at all.
    """
    handlers: list[tuple[type[Message], Handler]] = []
    subscribers: list[tuple[str, EventHandler]] = []
    seen: set[str] = set()
    for cls in type(obj).__mro__:
        for attr, fn in vars(cls).items():
            if attr in seen:
                continue
            seen.add(attr)
            for msg_type in getattr(fn, "_awen_handles", ()):
                handlers.append((msg_type, getattr(obj, attr)))
            for prefix in getattr(fn, "_awen_subscribes", ()):
                subscribers.append((prefix, getattr(obj, attr)))
    return handlers, subscribers


class Handlers:
    """Message type (its wire name) to handler, and whether the handler runs inline.

    ``get(type)`` gives ``(handler, inline)`` or None: the table's own
    ``dict.get``, since it is asked once for every message that arrives.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._table: dict[str, tuple[Handler, bool]] = {}
        self.get = self._table.get

    def __contains__(self, msg_type: type[Message]) -> bool:
        return msg_type.TYPE in self._table

    def register(self, msg_type: type[Message], handler: Handler) -> None:
        """Handle ``msg_type`` with ``handler(body, envelope)``; replaces any earlier handler."""
        if msg_type.TYPE not in self._catalog:
            raise ValueError(f"{msg_type.__qualname__} ({msg_type.TYPE}) is not in this actor's catalog")
        self._table[msg_type.TYPE] = (handler, not inspect.iscoroutinefunction(handler))
