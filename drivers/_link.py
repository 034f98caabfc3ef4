"""The link to one Photonica device: a message out, its reply in, device errors as exceptions, a link that heals.

Every message ends in ``;:SYST:ERR?``, so the device answers each one with
the query's reply (if it held one) followed by the oldest entry of its error
queue: a device error becomes a `DeviceError` carrying the SCPI number at
once, without a second round trip or a timeout.

When the link fails (dropped, silent past the reply's timeout, or a reply
that cannot be parsed) it is reopened in the one reconnect loop
(`Link._reconnect`), with exponential backoff and jitter (`ReconnectPolicy`):
stale replies are drained, ``*CLS``, the identity and the capabilities are
read again and must not have changed (`IdentityChanged` otherwise), and the
owner's set-up runs (the HAL arms the watchdog and reads the device's state
there) before anything else is sent. A message that may not have reached the
device is repeated only if it is idempotent (`protocol.photonica` says which
commands are); otherwise the caller gets a `LinkError` saying so. The first
connection goes through the same loop: once, or until the device answers.

A link is used by one task at a time: its owner serialises, as the HAL does
with the device's lock (decision 0011). A second task using it meanwhile is
a bug, raised as `trio.BusyResourceError`, rather than hidden by a second lock.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from protocol import Backoff, DeviceError, LinkError, scpi
from protocol import photonica as px
from protocol.photonica import DeviceDescription

from . import _replies as replies
from ._endpoint import Endpoint

log = logging.getLogger("awen.drivers")

T = TypeVar("T")
ERROR_QUERY = scpi.SEPARATOR + px.NEXT_ERROR.compose()
_ENTRY = re.compile(rb'^[+-]?\d+,"[^"]*"$')  # entries never hold a double quote inside


@dataclass(frozen=True)
class ReconnectPolicy(Backoff):
    """How the link tries again: `protocol.Backoff` (attempt k waits about ``first * 2**k``, at most ``longest``).

    Attributes:
        give_up_after: Seconds of failed attempts before the message that needed the link fails
            (a first connection made with ``keep_trying`` never gives up).
    """

    first: float = 0.05
    longest: float = 0.5
    give_up_after: float = 30.0


class IdentityChanged(LinkError):
    """After a reconnect the device answered with another identity, or other capabilities."""


EventHook = Callable[[str, str], None]
"""Told (kind, detail) of ``unreachable`` (an attempt to connect failed), ``disconnected``,
``reconnected`` and ``resynchronised``."""

SetUp = Callable[[bool], Awaitable[None]]
"""The owner's set-up, run after every connection (``True`` the first time) before anything else is sent."""


class Link:
    """One device's link; `drivers.PhotonicaDriver` composes what goes over it.

    Args:
        endpoint: Where the device is.
        name: For logs and errors.
        timeout: Seconds a reply may take unless a message says otherwise
            (``reply_timeout``: a shot run takes longer). The caller's own
            deadlines (``trio.fail_after``) apply too; a message cut short leaves
            the link to be resynchronised first thing next time.
        reconnect: The backoff policy.
        attempts: Times an idempotent message is tried before a link failure
            is reported (others are tried once).
        on_event: Told about link events.
        set_up: Run after every connection, first and re-connections alike,
            with the link to itself: its messages are not repeated or
            reconnected for; a failure ends the attempt, and the loop tries again.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        name: str = "device",
        timeout: float = 2.0,
        reconnect: ReconnectPolicy | None = None,
        attempts: int = 3,
        on_event: EventHook | None = None,
        set_up: SetUp | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self.timeout = timeout
        self.policy = reconnect or ReconnectPolicy()
        self.attempts = attempts
        self.on_event = on_event or (lambda kind, detail: None)
        self.set_up = set_up
        self.identity: str | None = None
        """What ``*IDN?`` answered at the first connection."""
        self.description: DeviceDescription | None = None
        """What ``SYST:CAP?`` answered at the first connection."""
        self.reconnects = 0
        self._stream: trio.abc.Stream | None = None
        self._framer = scpi.Framer()
        self._ready: list[bytes] = []
        self._dirty = False
        self._user: trio.lowlevel.Task | None = None
        self._setting_up = False
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        self._transcript = logging.getLogger(f"awen.drivers.transcript.{name}")

    # --- life cycle ---------------------------------------------------------------------

    async def connect(self, nursery: trio.Nursery, *, keep_trying: bool = False) -> None:
        """Open the link, learn the device (identity, capabilities), run the set-up.

        Args:
            nursery: Hosts the endpoint's helper tasks (a simulated device's watchdog).
            keep_trying: Until the device answers (a lab may start awen before
                its devices); otherwise once, and `LinkError` if that fails.
        """
        self._nursery = nursery
        with self._in_use():
            await self._reconnect(first=True, give_up_after=math.inf if keep_trying else 0.0)

    async def aclose(self) -> None:
        if self._stream is not None:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None
        await self.endpoint.aclose()

    # --- a message and its reply --------------------------------------------------------

    async def send(self, message: bytes, *, idempotent: bool, reply_timeout: float | None = None) -> None:
        """Send commands (``;``-separated) and check that the device accepted them."""
        await self._call(message, query=False, idempotent=idempotent, reply_timeout=reply_timeout, parse=None)

    async def ask(
        self, message: bytes, parse: Callable[[bytes], T], *, idempotent: bool, reply_timeout: float | None = None
    ) -> T:
        """Send a message holding one query; its reply as ``parse`` reads it.

        A reply that does not parse was garbled on the way: like any link fault,
        the link is resynchronised and an idempotent message repeated.
        """
        value: T = await self._call(
            message, query=True, idempotent=idempotent, reply_timeout=reply_timeout, parse=parse
        )
        return value

    async def _call(
        self,
        message: bytes,
        *,
        query: bool,
        idempotent: bool,
        reply_timeout: float | None,
        parse: Callable[[bytes], Any] | None,
    ) -> Any:
        with self._in_use():
            if self._setting_up:  # inside the reconnect loop: a failure ends this attempt, the loop tries again
                return await self._once(message, query, reply_timeout, parse)
            for attempt in range(self.attempts):
                try:
                    if self._stream is None:
                        await self._reconnect(first=False, give_up_after=self.policy.give_up_after)
                    elif self._dirty:
                        await self._resync()
                    return await self._once(message, query, reply_timeout, parse)
                except IdentityChanged:
                    raise
                except LinkError as exc:
                    self._dirty = True
                    await self._drop(str(exc))
                    if idempotent and attempt + 1 < self.attempts:
                        log.warning("%s: %s; reconnecting and repeating %r (idempotent)", self.name, exc, message[:60])
                        continue
                    if idempotent:
                        raise
                    raise LinkError(
                        f"{self.name}: {exc}; {message[:60]!r} may or may not have been carried out "
                        "(not idempotent, so not repeated)"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, message: bytes, query: bool, reply_timeout: float | None, parse: Callable[[bytes], Any] | None
    ) -> Any:
        """One exchange on the open link: the reply's value as ``parse`` reads it (None without a query)."""
        reply = await self._exchange(message + ERROR_QUERY, reply_timeout or self.timeout)
        value = await self._check(message, reply, query)
        if parse is None or value is None:
            return value
        try:
            return parse(value)
        except (ValueError, scpi.ScpiError) as exc:
            raise LinkError(f"{self.name}: garbled reply {value[:60]!r} ({exc})") from None

    async def _exchange(self, message: bytes, reply_timeout: float) -> bytes:
        stream = self._stream
        if stream is None:
            raise LinkError(f"{self.name}: not connected")
        self._transcript.debug("-> %r", message[:200])
        # Until the reply is in, its bytes may still be on their way: if this
        # ends any other way (timeout, dropped link, the caller's own
        # cancellation), the next message resynchronises first.
        self._dirty = True
        try:
            with trio.fail_after(reply_timeout):
                await stream.send_all(message + b"\n")
                reply = await self._read_message(stream)
        except trio.TooSlowError:
            raise LinkError(f"{self.name}: no reply within {reply_timeout:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise LinkError(f"{self.name}: link dropped ({exc or type(exc).__name__})") from exc
        self._dirty = False
        self._transcript.debug("<- %r", reply[:200])
        return reply

    async def _read_message(self, stream: trio.abc.Stream) -> bytes:
        while not self._ready:
            data = await stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("the device closed the connection")
            for item in self._framer.feed(bytes(data)):
                if isinstance(item, bytes):
                    self._ready.append(item)
        return self._ready.pop(0)

    async def _check(self, message: bytes, reply: bytes, query: bool) -> bytes | None:
        value, entry = _split_reply(reply, query)
        try:
            code, text = scpi.parse_error_entry(entry.decode("ascii"))
        except (scpi.ScpiError, UnicodeDecodeError):
            raise LinkError(f"{self.name}: garbled reply {reply[:60]!r}") from None
        if code != 0:
            more = await self._drain_errors()
            detail = text + (f" (then: {'; '.join(more)})" if more else "")
            raise DeviceError(code, detail, command=message.decode("ascii", "replace")[:80], device=self.name)
        if query and value is None:
            raise LinkError(f"{self.name}: garbled reply {reply[:60]!r}")
        return value

    async def _drain_errors(self) -> list[str]:
        more: list[str] = []
        for _ in range(32):
            entry = await self._exchange(px.NEXT_ERROR.compose(), self.timeout)
            try:
                code, text = scpi.parse_error_entry(entry.decode("ascii", "replace"))
            except scpi.ScpiError:
                raise LinkError(f"{self.name}: garbled reply {entry[:60]!r}") from None
            if code == 0:
                break
            more.append(f"{code} {text}")
        return more

    def _in_use(self) -> _InUse:
        return _InUse(self)

    # --- the reconnect loop -------------------------------------------------------------

    async def _drop(self, why: str) -> None:
        if self._stream is not None:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None
            self.on_event("disconnected", why)

    async def _reconnect(self, *, first: bool, give_up_after: float) -> None:
        """Open, resynchronise, make sure of the device, set it up; again with backoff until it works.

        Gives up with `LinkError` after ``give_up_after`` seconds (0: after one
        attempt); `IdentityChanged`, and whatever else the set-up raises, ends it at once.
        """
        assert self._nursery is not None
        deadline = trio.current_time() + give_up_after
        for attempt in itertools.count():
            try:
                self._stream = await self.endpoint.open(self._nursery)
                self._framer, self._ready = scpi.Framer(), []
                self._dirty = False  # a fresh connection: nothing of the old one's is in flight on it
                await self._resync()
                await self._check_capabilities()
                if self.set_up is not None:
                    self._setting_up = True
                    try:
                        await self.set_up(first)
                    finally:
                        self._setting_up = False
            except IdentityChanged:
                await self._close_quietly()
                raise
            except (OSError, LinkError, DeviceError, trio.BrokenResourceError) as exc:
                await self._close_quietly()  # whatever the set-up did not finish, the next attempt does again
                if trio.current_time() >= deadline:
                    raise LinkError(f"{self.name}: cannot reach {self.endpoint.url}: {exc}") from exc
                log.debug("%s: attempt %d to connect failed: %s", self.name, attempt + 1, exc)
                self.on_event("unreachable", str(exc))
                await trio.sleep(self.policy.delay(attempt, self._rng))
                continue
            except BaseException:  # cancelled, or the set-up refused the device: never leave it half set up
                await self._close_quietly()
                raise
            if not first:
                self.reconnects += 1
                log.warning("%s: reconnected to %s", self.name, self.endpoint.url)
                self.on_event("reconnected", self.endpoint.url)
            return

    async def _close_quietly(self) -> None:
        if self._stream is not None:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None

    async def _resync(self) -> None:
        """Forget whatever was in flight; make sure it is the same device.

        Replies to a message that timed out or was cancelled may still be on
        their way: ask the device to echo a fresh random token and discard
        everything before it. Then read the identity, twice if need be, so
        that one corrupted reply is not taken for a different device.
        """
        stream = self._stream
        assert stream is not None
        token = self._rng.randrange(10**9, 10**10)
        try:
            with trio.fail_after(self.timeout * 2):
                await stream.send_all(scpi.SEPARATOR.join((px.CLEAR_STATUS.compose(), px.ECHO.compose(token))) + b"\n")
                stale = 0
                while await self._read_message(stream) != b"%d" % token:
                    stale += 1
                if stale:
                    log.info("%s: discarded %d stale repl%s", self.name, stale, "y" if stale == 1 else "ies")
                identity = await self._read_identity(stream)
        except trio.TooSlowError:
            raise LinkError(f"{self.name}: no answer while resynchronising") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise LinkError(f"{self.name}: link dropped while resynchronising ({exc or type(exc).__name__})") from exc
        if self.identity is not None and identity != self.identity:
            raise IdentityChanged(f"{self.name}: was {self.identity!r}, now answers {identity!r}; refused")
        self.identity = identity
        if self._dirty:
            self.on_event("resynchronised", identity)
        self._dirty = False

    async def _read_identity(self, stream: trio.abc.Stream) -> str:
        """``*IDN?``, asked until two answers agree (a flipped bit must not pass for a new device)."""
        answers: list[bytes] = []
        for _ in range(4):
            await stream.send_all(px.IDENTITY.compose() + b"\n")
            answers.append(await self._read_message(stream))
            if len(answers) >= 2 and answers[-1] == answers[-2]:
                return replies.text(answers[-1])
        raise LinkError(f"{self.name}: identity replies disagree: {answers}")

    async def _check_capabilities(self) -> None:
        """Learn the capabilities at the first connection; after a reconnect, refuse other ones.

        Read again when they differ, so that one corrupted reply is not taken
        for a different device; two agreeing differing answers are.
        """
        message = px.CAPABILITIES.compose()
        if self.description is None:
            self.description = await self._once(message, True, None, replies.description)
            return
        answers: list[DeviceDescription] = []
        for _ in range(4):
            answer = await self._once(message, True, None, replies.description)
            if answer == self.description:
                return
            answers.append(answer)
            if len(answers) >= 2 and answers[-1] == answers[-2]:
                break
        raise IdentityChanged(f"{self.name}: its capabilities changed across a reconnect; refused")


class _InUse:
    """Marks the link as used by the current task; another task using it meanwhile is `trio.BusyResourceError`.

    The same task may nest (the set-up runs inside the reconnect loop of the message that needed it).
    """

    __slots__ = ("_link", "_outer")

    def __init__(self, link: Link) -> None:
        self._link = link

    def __enter__(self) -> None:
        task = trio.lowlevel.current_task()
        user = self._link._user
        if user is not None and user is not task:
            raise trio.BusyResourceError(
                f"{self._link.name}: another task is using this device's link; its owner must take turns "
                "(the HAL holds the device's lock)"
            )
        self._outer, self._link._user = user, task

    def __exit__(self, *exc: object) -> None:
        self._link._user = self._outer


def _split_reply(reply: bytes, query: bool) -> tuple[bytes | None, bytes]:
    """(the query's reply, the error entry) of ``<reply>;<code>,"<text>"``.

    A query that failed answers nothing, so the line is the error entry alone
    (whose text may itself hold a ';').
    """
    if not query or _ENTRY.match(reply):
        return None, reply
    if reply.startswith(b"#") and len(reply) > 2 and 0x31 <= reply[1] <= 0x39:
        digits = reply[1] - 0x30
        header = reply[2 : 2 + digits]
        if header.isdigit():
            end = 2 + digits + int(header)
            if reply[end : end + 1] == b";":
                return reply[:end], reply[end + 1 :]
    value, sep, entry = reply.partition(b";")
    if not sep:
        return None, reply  # the query failed: only the error entry came back
    return value, entry
