"""Where an actor is in its life, as each of its parts sees it."""

from __future__ import annotations

import trio


class Lifecycle:
    """Set by `Actor.run` alone; read by the parts that start tasks or answer differently while starting or stopping.

    Attributes:
        work: The actor's nursery for background work (handlers that wait,
            async subscribers, `Actor.start_soon`), from just before `setup`
            until the actor stops; None outside that.
        serving: `setup` has run: requests are answered, no longer refused
            ``not-ready``.
        stopping: The actor has begun to stop: requests are refused
            ``actor-stopped`` and events are no longer handed to subscribers.
        started_at: When `Actor.run` began (trio's clock): uptime counts from here.
    """

    __slots__ = ("serving", "started_at", "stopping", "work")

    def __init__(self) -> None:
        self.work: trio.Nursery | None = None
        self.serving = False
        self.stopping = False
        self.started_at = 0.0
