"""Messages of the actor runtime itself: every actor speaks these.

Names: requests are verbs (``sys.get_status``), replies and events nouns or
past participles (``sys.status``, ``peer.lost``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ._errors import ErrorCode
from ._message import (
    I64,
    U63,
    Count,
    Event,
    Label,
    Notice,
    Pid,
    Reason,
    Reply,
    Request,
    Seconds,
)
from ._text import clip

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
"""An actor name: letters, digits, ``_``, ``.`` and ``-``."""

Incarnation = U63
"""A random number an actor draws when it starts (awen's are below 2**62)."""

MAX_ERROR_MESSAGE = 4096
"""The longest ``sys.error`` message: longer ones are cut (the log has the rest)."""

MAX_ERROR_FIELD = 200
"""The longest field path a ``sys.error`` names."""


# --- replies every request may get -----------------------------------------------------


class Error(Reply, frozen=True, kw_only=True):
    """The reply to a request that failed, or to a frame that could not be read.

    Attributes:
        code: A stable code from the table in docs/protocol.md.
        message: What went wrong, for a human.
        field: The offending field as a dotted path (``body.shots``), if any.
    """

    TYPE = "sys.error"
    code: Annotated[str, msgspec.Meta(max_length=64)]
    message: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_MESSAGE)]
    field: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_FIELD)] | None = None

    @property
    def error_code(self) -> ErrorCode | None:
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None


def bounded_error(error: Error) -> Error:
    """``error`` with its message and field cut to what the schema allows, saying how much was cut."""
    message, field = error.message, error.field
    if len(message) <= MAX_ERROR_MESSAGE and (field is None or len(field) <= MAX_ERROR_FIELD):
        return error
    return Error(
        code=error.code,
        message=clip(message, MAX_ERROR_MESSAGE),
        field=None if field is None else clip(field, MAX_ERROR_FIELD),
    )


class Ok(Reply, frozen=True, kw_only=True):
    """A reply that carries nothing but success."""

    TYPE = "sys.ok"


# --- liveness and introspection -----------------------------------------------------------


class Pong(Reply, frozen=True, kw_only=True):
    TYPE = "sys.pong"
    data: Any = None
    pid: Pid
    incarnation: Incarnation


class Ping(Request[Pong], frozen=True, kw_only=True):
    """Ask an actor to answer at once, echoing ``data`` (bytes, a numpy array, anything)."""

    TYPE = "sys.ping"
    REPLY = Pong
    data: Any = None


PeerState = Literal["unknown", "up", "lost", "stopped"]
"""What an actor knows of a peer: never heard from, heartbeats coming, silent too long, or said it stops."""


class PeerInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state: PeerState
    incarnation: Incarnation | None = None
    last_seen_ago: Seconds | None = None


class Status(Reply, frozen=True, kw_only=True):
    """An actor's view of itself.

    Attributes:
        handled: Messages handled since start.
        failed: Requests answered with an error.
        malformed: Frames that could not be decoded.
        in_flight: Handlers running now.
        pending: Requests this actor sent that still await a reply.
        peers: Liveness of every peer in the directory, by name.
    """

    TYPE = "sys.status"
    name: Label
    kind: Label
    pid: Pid
    incarnation: Incarnation
    uptime: Seconds
    handled: Count
    failed: Count
    malformed: Count
    in_flight: Count
    pending: Count
    peers: dict[str, PeerInfo] = msgspec.field(default_factory=dict)


class GetStatus(Request[Status], frozen=True, kw_only=True):
    TYPE = "sys.get_status"
    REPLY = Status


MAX_SERIES = 512
"""The most metric series one heartbeat carries."""

MetricName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")]
LabelValues = Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Label], msgspec.Meta(max_length=8)]


class Series(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One labelled series of a metric: a counter's or gauge's ``value``; for a histogram, the cumulative
    ``buckets`` counts (one per `Metric.bounds`, then +Inf), ``sum`` and ``count``."""

    labels: LabelValues = msgspec.field(default_factory=dict)
    value: float = 0.0
    buckets: Annotated[list[Count], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    sum: float = 0.0
    count: Count = 0


class Metric(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A metric an actor keeps (`runtime.Metrics`), as its heartbeat reports it: Prometheus' data model.

    ``name`` is the family's (``awen_shots_total``), in base units; ``bounds`` are a
    histogram's bucket upper bounds.
    """

    name: MetricName
    kind: Literal["counter", "gauge", "histogram"]
    help: Annotated[str, msgspec.Meta(max_length=256)] = ""
    bounds: Annotated[list[float], msgspec.Meta(max_length=63)] = msgspec.field(default_factory=list)
    series: Annotated[list[Series], msgspec.Meta(max_length=MAX_SERIES)] = msgspec.field(default_factory=list)


class Heartbeat(Event, frozen=True, kw_only=True):
    """Published by every actor every ``interval`` seconds.

    A peer that misses ``liveness`` consecutive heartbeats is declared lost.
    ``incarnation`` changes when the actor restarts; ``uptime`` tells which
    pending requests the new incarnation cannot have received.
    """

    TYPE = "sys.heartbeat"
    name: Name
    pid: Pid
    incarnation: Incarnation
    seq: Count
    interval: Seconds
    uptime: Seconds
    metrics: Annotated[list[Metric], msgspec.Meta(max_length=MAX_SERIES)] | None = None
    """The actor's metrics (decision 0015 §2), when any changed since its last heartbeat: every one it keeps,
    so that a listener that missed beats, or started late, has them all from the next one."""


class Stopping(Event, frozen=True, kw_only=True):
    """Published by an actor as it begins to stop on purpose; its peers stop expecting heartbeats."""

    TYPE = "sys.stopping"
    name: Name
    incarnation: Incarnation


class Ready(Notice, frozen=True, kw_only=True):
    """Sent by an actor process to its supervisor once its sockets are bound."""

    TYPE = "sys.ready"
    name: Name
    pid: Pid
    incarnation: Incarnation


class PeerUp(Event, frozen=True, kw_only=True):
    """A peer was heard from for the first time, again after a loss, or after a restart."""

    TYPE = "peer.up"
    peer: Name
    incarnation: Incarnation
    restarted: bool = False


class PeerLost(Event, frozen=True, kw_only=True):
    """A peer stopped sending heartbeats, or its supervisor saw its process exit."""

    TYPE = "peer.lost"
    peer: Name
    reason: Reason
    silent_for: Seconds | None = None


# --- supervision ---------------------------------------------------------------------------


class ActorStarted(Event, frozen=True, kw_only=True):
    TYPE = "actor.started"
    actor: Name
    pid: Pid
    restarts: Count = 0


class ActorExited(Event, frozen=True, kw_only=True):
    """An actor stopped. ``expected`` is false for a crash.

    Attributes:
        returncode: The process exit status; negative for a signal (-9 is SIGKILL).
            None for an actor running as a task.
    """

    TYPE = "actor.exited"
    actor: Name
    pid: Pid
    returncode: I64 | None
    expected: bool
    reason: Reason


class ActorRestarting(Event, frozen=True, kw_only=True):
    TYPE = "actor.restarting"
    actor: Name
    delay: Seconds
    restarts: Count
    window: Seconds


class ActorCrashLooping(Event, frozen=True, kw_only=True):
    """An actor keeps crashing: ``crashes`` in a row (none ran ``window`` seconds); tried again in ``delay``.

    Published with every restart while it lasts. The rest of the lab goes on;
    the HAL puts its devices in their safe state.
    """

    TYPE = "actor.crash_looping"
    actor: Name
    crashes: Count
    window: Seconds
    delay: Seconds
    reason: Reason


class ActorGaveUp(Event, frozen=True, kw_only=True):
    """The supervisor stopped restarting an actor (its policy has ``give_up``): it crashed too often."""

    TYPE = "actor.gave_up"
    actor: Name
    restarts: Count
    window: Seconds
    reason: Reason


SYSTEM_MESSAGES: tuple[type[Request[Any]] | type[Reply] | type[Notice] | type[Event], ...] = (
    Error,
    Ok,
    Ping,
    Pong,
    GetStatus,
    Status,
    Heartbeat,
    Stopping,
    Ready,
    PeerUp,
    PeerLost,
    ActorStarted,
    ActorExited,
    ActorRestarting,
    ActorCrashLooping,
    ActorGaveUp,
)
