"""Liveness: which peers are up, learnt from their heartbeats, and what happens when one goes.

Every actor with an address publishes ``sys.heartbeat`` each
``heartbeat_interval``, carrying its incarnation and uptime. A peer silent for
``liveness`` of its intervals is declared lost (``peer.lost``) and the
requests pending on it fail at once; so do they when the supervisor says its
process exited (``actor.exited``). A new incarnation in a heartbeat is a
restart (``peer.up`` with ``restarted``): requests sent to the old one fail.
A peer that says it is stopping (``sys.stopping``) is ``stopped``.

A heartbeat carries the actor's metrics (`runtime.Metrics`, decision 0015 §2):
all of them when any changed since the last beat, and every `REFRESH_BEATS`-th
beat (the first included) whether or not, so that a listener that started
late, or missed the beat that had them, has them within that many intervals
even from an idle actor. Otherwise ``metrics`` is None, and the beat stays small.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from protocol import Event, Message
from protocol.system import ActorExited, Heartbeat, PeerInfo, PeerLost, PeerState, PeerUp, Stopping

from ._config import Address, RuntimeOptions
from ._errors import PeerLostError
from ._lifecycle import Lifecycle
from ._metrics import Metrics
from ._requests import Requests

log = logging.getLogger("awen.actor")

REFRESH_BEATS = 10
"""Every this many heartbeats carry the actor's metrics, changed or not (the first does)."""


@dataclass
class _Peer:
    state: PeerState = "unknown"
    incarnation: int | None = None
    last_seen: float = -math.inf
    interval: float = 1.0


class Peers:
    """What an actor knows of each peer: ``unknown`` (never heard from), ``up``, ``lost`` or ``stopped``."""

    def __init__(self, name: str, directory: Mapping[str, Address]) -> None:
        self._name = name
        self._directory = directory
        self.table: dict[str, _Peer] = {n: _Peer() for n in directory if n != name}
        self.changed = trio.lowlevel.ParkingLot()
        """Unparked whenever a peer's state changes."""

    def state(self, name: str) -> PeerState:
        peer = self.table.get(name)
        return "unknown" if peer is None else peer.state

    async def wait_up(self, name: str) -> None:
        while self.state(name) != "up":
            await self.changed.park()

    def why_silent(self, to: str) -> str:
        """What we know of a peer that did not answer, for the message that says so."""
        peer = self.table.get(to)
        if peer is None or peer.state == "unknown":
            return f"{to} has not been heard from (not started, or unreachable at {self._directory[to].address})"
        if peer.state == "lost":
            return f"{to} is lost"
        ago = trio.current_time() - peer.last_seen
        return f"{to} is alive (last heartbeat {ago:.1f} s ago) but slow or overloaded"

    def info(self, now: float) -> dict[str, PeerInfo]:
        """Each peer's state for `protocol.system.Status`, at ``now`` (trio's clock)."""
        return {
            name: PeerInfo(
                state=peer.state,
                incarnation=peer.incarnation,
                last_seen_ago=None if peer.last_seen == -math.inf else now - peer.last_seen,
            )
            for name, peer in sorted(self.table.items())
        }


class Liveness:
    """Sends this actor's heartbeats, reads its peers', and keeps `Peers` and the pending requests true to them.

    Args:
        name, pid, incarnation: This actor, as its heartbeats say.
        options: ``heartbeat_interval`` and ``liveness``.
        peers: What it knows of its peers, kept here.
        requests: Its pending requests, failed when their peer goes.
        publish: How it publishes an event (heartbeats, ``peer.up``, ``peer.lost``).
        life: When it started, for the uptime its heartbeats carry.
        metrics: What its heartbeats report.
    """

    WATCHED = (Heartbeat.TYPE, Stopping.TYPE, ActorExited.TYPE)
    """Event types every actor subscribes to, whatever its subscriptions."""

    def __init__(
        self,
        name: str,
        pid: int,
        incarnation: int,
        options: RuntimeOptions,
        *,
        peers: Peers,
        requests: Requests,
        publish: Callable[[Event], None],
        life: Lifecycle,
        metrics: Metrics | None = None,
    ) -> None:
        self._name = name
        self._pid = pid
        self._incarnation = incarnation
        self._options = options
        self._peers = peers
        self._requests = requests
        self._publish = publish
        self._life = life
        self._metrics = metrics if metrics is not None else Metrics()

    async def heartbeats(self) -> None:
        """Publish a heartbeat every ``heartbeat_interval`` (a task for as long as the actor runs)."""
        interval = self._options.heartbeat_interval
        metrics = self._metrics
        for seq in itertools.count():
            self._publish(
                Heartbeat(
                    name=self._name,
                    pid=self._pid,
                    incarnation=self._incarnation,
                    seq=seq,
                    interval=interval,
                    uptime=trio.current_time() - self._life.started_at,
                    metrics=metrics.report(force=seq % REFRESH_BEATS == 0),
                )
            )
            await trio.sleep(interval)

    async def watch(self) -> None:
        """Declare lost each peer silent too long (a task for as long as the actor runs)."""
        while True:
            await trio.sleep(self._options.heartbeat_interval / 2)
            now = trio.current_time()
            for name, peer in self._peers.table.items():
                silent = now - peer.last_seen
                if peer.state == "up" and silent > self._options.liveness * peer.interval:
                    self.mark_lost(name, f"no heartbeat for {silent:.1f} s", silent)

    def observe(self, body: Message) -> None:
        """Learn from an event that arrived, before any subscriber sees it."""
        if isinstance(body, Heartbeat):
            self._on_heartbeat(body)
        elif isinstance(body, Stopping):
            self._mark_stopped(body.name, body.incarnation)
        elif isinstance(body, ActorExited) and not body.expected:
            self.mark_lost(body.actor, f"its process exited ({body.reason})", None)

    def _on_heartbeat(self, beat: Heartbeat) -> None:
        if beat.name == self._name:
            return
        peer = self._peers.table.setdefault(beat.name, _Peer())
        restarted = peer.incarnation is not None and peer.incarnation != beat.incarnation
        if restarted:
            # Requests sent before the new incarnation started went to the old
            # one, which will never answer them.
            born = trio.current_time() - beat.uptime
            self._requests.fail_to(
                beat.name, PeerLostError(f"{beat.name} restarted while the request was pending"), sent_before=born
            )
        was_up = peer.state == "up"
        peer.state, peer.incarnation, peer.interval = "up", beat.incarnation, beat.interval
        peer.last_seen = trio.current_time()
        if not was_up or restarted:
            log.info("%s: peer %s is up%s", self._name, beat.name, " (restarted)" if restarted else "")
            self._peers.changed.unpark_all()
            self._publish(PeerUp(peer=beat.name, incarnation=beat.incarnation, restarted=restarted))

    def mark_lost(self, name: str, reason: str, silent_for: float | None) -> None:
        """Declare ``name`` lost (unless it is lost or stopped already): its pending requests fail now."""
        peer = self._peers.table.get(name)
        if peer is None or name == self._name or peer.state in ("lost", "stopped"):
            return
        peer.state = "lost"
        log.warning("%s: peer %s lost: %s", self._name, name, reason)
        self._requests.fail_to(name, PeerLostError(f"{name} was lost: {reason}"))
        self._peers.changed.unpark_all()
        self._publish(PeerLost(peer=name, reason=reason, silent_for=silent_for))

    def _mark_stopped(self, name: str, incarnation: int) -> None:
        peer = self._peers.table.get(name)
        if peer is not None and peer.incarnation in (None, incarnation):
            peer.state = "stopped"
            log.info("%s: peer %s is stopping", self._name, name)
            self._peers.changed.unpark_all()
