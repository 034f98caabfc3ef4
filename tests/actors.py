"""Actors and message types used by the tests (child processes import these too)."""

from __future__ import annotations

from typing import Any

import trio
import trio.lowlevel

from protocol import AwenError, ErrorCode, Event, Notice, Reply, Request
from protocol.catalog import CATALOG
from protocol.system import Ok, Ping, Pong
from runtime import Actor, Runtime, handles


class Total(Reply, frozen=True, kw_only=True):
    TYPE = "test.total"
    total: int


class Add(Request[Total], frozen=True, kw_only=True):
    TYPE = "test.add"
    REPLY = Total
    n: int
    delay: float = 0.0
    soon: bool = False
    """Publish the change with `Actor.publish_soon`."""


class Note(Notice, frozen=True, kw_only=True):
    TYPE = "test.note"
    seq: int


class Changed(Event, frozen=True, kw_only=True):
    TYPE = "test.changed"
    total: int


class Fail(Request[Ok], frozen=True, kw_only=True):
    TYPE = "test.fail"
    REPLY = Ok
    how: str


TEST_CATALOG = CATALOG.extended([Total, Add, Note, Changed, Fail])


class BadShots(AwenError):
    code = ErrorCode.BAD_REQUEST


class Counter(Actor):
    """Adds numbers, remembers notes in arrival order, publishes each change."""

    KIND = "counter"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime)
        self.total = 0
        self.notes: list[int] = []
        self.most_in_flight = 0
        self.adding = trio.Event()
        self._noted = trio.lowlevel.ParkingLot()

    async def wait_notes(self, count: int) -> None:
        while len(self.notes) < count:
            await self._noted.park()

    @handles(Add)
    async def add(self, msg: Add, env: Any) -> Total:
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.adding.set()
        if msg.delay:
            await trio.sleep(msg.delay)
        self.total += msg.n
        (self.publish_soon if msg.soon else self.publish)(Changed(total=self.total))
        return Total(total=self.total)

    @handles(Note)
    async def note(self, msg: Note, env: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.notes.append(msg.seq)
        self._noted.unpark_all()

    @handles(Fail)
    def fail(self, msg: Fail, env: Any) -> Ok:
        if msg.how == "awen":
            raise BadShots("shots must be positive, got -3", field="body.shots")
        if msg.how == "bug":
            raise ZeroDivisionError("division by zero")
        return Ok()


class Relay(Actor):
    """Answers sys.ping by pinging ``peer`` and handing back what it answered."""

    KIND = "relay"

    def __init__(self, name: str, runtime: Runtime, *, peer: str) -> None:
        super().__init__(name, runtime)
        self.peer = peer

    @handles(Ping)
    async def relay(self, msg: Ping, env: Any) -> Pong:
        return await self.request(self.peer, Ping(data=msg.data))


class CrashOnStart(Actor):
    """Crashes right after it is up: for restart-policy tests."""

    async def main(self) -> None:
        await trio.sleep(0.05)
        raise RuntimeError("crashing on purpose")


class Stubborn(Actor):
    """Its teardown never finishes: the runtime must cut it off after ``stop_timeout``."""

    async def teardown(self) -> None:
        await trio.sleep_forever()


class SlowToStart(Counter):
    """A counter whose `setup` waits until ``opened`` is set: its store, as it were, is being opened."""

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime, **config)
        self.opened = trio.Event()

    async def setup(self) -> None:
        await self.opened.wait()
