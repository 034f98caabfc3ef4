"""The Photonica driver: commands over any endpoint, errors as exceptions, links that heal.

Every message the driver sends ends in ``;:SYST:ERR?``, so the device answers
each one with the command's reply (if it was a query) followed by the oldest
entry of its error queue: a device error becomes a `DeviceError` carrying the
SCPI number at once, without a second round trip or a timeout.

When the link fails (dropped, silent past the command's timeout, or a reply
that cannot be parsed) the driver reconnects with exponential backoff and
jitter, resynchronises (drains stale replies, ``*CLS``, re-reads the
identity) and reports what happened. A command that may not have reached the
device is repeated only if it is idempotent (`protocol.photonica.COMMANDS`
says which are); otherwise the caller gets a `LinkError` saying so.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from protocol import DeviceError, LinkError, scpi
from protocol.photonica import DeviceDescription, decode_description, find_command

from ._endpoint import Endpoint, endpoint_from_url
from ._lock import held

log = logging.getLogger("awen.drivers")

T = TypeVar("T")
ERROR_QUERY = b";:SYST:ERR?"
_ENTRY = re.compile(rb'^[+-]?\d+,"[^"]*"$')  # entries never hold a double quote inside


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter: attempt k waits about ``first * 2**k``, at most ``longest``.

    Attributes:
        give_up_after: Seconds of failed attempts before the command fails.
    """

    first: float = 0.05
    longest: float = 0.5
    give_up_after: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.longest, self.first * 2.0**attempt)
        return float(base * (1 + self.jitter * (2 * rng.random() - 1)))


class IdentityChanged(LinkError):
    """After a reconnect the device answered with another identity."""


EventHook = Callable[[str, str], None]
"""Called with (kind, detail): ``disconnected``, ``reconnected``, ``resynchronised``."""


class PhotonicaDriver:
    """One Photonica device.

    Use as ``async with open_driver(url) as driver:``.

    Args:
        endpoint: Where the device is.
        name: For logs and events.
        timeout: Seconds a command's reply may take, unless a command says
            otherwise (``reply_timeout``: a shot run takes longer). The
            caller's own deadlines (``trio.fail_after``) apply too; a command
            cut short leaves the link to be resynchronised first thing next time.
        reconnect: The backoff policy.
        attempts: Times an idempotent command is tried before a link failure
            is reported (others are tried once).
        on_event: Told about link events.
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
    ) -> None:
        self.attempts = attempts
        self.endpoint = endpoint
        self.name = name
        self.timeout = timeout
        self.reconnect_policy = reconnect or ReconnectPolicy()
        self.on_event = on_event or (lambda kind, detail: None)
        self.identity: str | None = None
        self.description: DeviceDescription | None = None
        self._stream: trio.abc.Stream | None = None
        self._framer = scpi.Framer()
        self._ready: list[bytes] = []
        self._dirty = False
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        self._transcript = logging.getLogger(f"awen.drivers.transcript.{name}")
        self.reconnects = 0

    # --- the public commands ------------------------------------------------------------

    async def query(self, command: str | bytes, *, reply_timeout: float | None = None) -> bytes:
        """Send one query and return its reply (raises `DeviceError` if the device refused it)."""
        reply: bytes = await self._call(_bytes(command), query=True, reply_timeout=reply_timeout)
        return reply

    async def query_as(
        self, command: str | bytes, parse: Callable[[bytes], T], *, reply_timeout: float | None = None
    ) -> T:
        """A query whose reply ``parse`` turns into a value.

        A reply that does not parse was garbled on the way: like any link
        fault, the link is resynchronised and an idempotent query repeated.
        """
        result = await self._call(_bytes(command), query=True, reply_timeout=reply_timeout, parse=parse)
        return result  # type: ignore[no-any-return]

    async def write(self, command: str | bytes, *, reply_timeout: float | None = None) -> None:
        """Send commands (``;``-separated allowed) and check the device accepted them."""
        await self._call(_bytes(command), query=False, reply_timeout=reply_timeout)

    # --- life cycle ---------------------------------------------------------------------

    async def connect(self, nursery: trio.Nursery) -> None:
        """Open the link, read identity and capabilities."""
        self._nursery = nursery
        async with self._lock:
            await self._reconnect(first=True)
        self.description = await self.query_as("SYST:CAP?", _description)

    async def aclose(self) -> None:
        if self._stream is not None:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None
        await self.endpoint.aclose()

    # --- the exchange -------------------------------------------------------------------

    async def _call(
        self, message: bytes, *, query: bool, reply_timeout: float | None, parse: Callable[[bytes], Any] | None = None
    ) -> Any:
        async with held(self._lock):
            for attempt in range(self.attempts):
                try:
                    if self._stream is None:
                        await self._reconnect()
                    elif self._dirty:
                        await self._resync()
                    reply = await self._exchange(message + ERROR_QUERY, reply_timeout or self.timeout)
                    value = await self._check(message, reply, query)
                    if parse is None or value is None:
                        return value
                    try:
                        return parse(value)
                    except (ValueError, scpi.ScpiError) as exc:
                        raise LinkError(f"{self.name}: garbled reply {value[:60]!r} ({exc})") from None
                except LinkError as exc:
                    self._dirty = True
                    idempotent = _idempotent(message)  # only asked when it matters
                    if idempotent and attempt + 1 < self.attempts:
                        log.warning("%s: %s; reconnecting and repeating %r (idempotent)", self.name, exc, message[:60])
                        await self._drop(str(exc))
                        continue
                    await self._drop(str(exc))
                    if idempotent:
                        raise
                    raise LinkError(
                        f"{self.name}: {exc}; {message[:60]!r} may or may not have been carried out "
                        "(not idempotent, so not repeated)"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, message: bytes, reply_timeout: float) -> bytes:
        stream = self._stream
        assert stream is not None
        self._transcript.debug("-> %r", message[:200])
        # Until the reply is in, its bytes may still be on their way: if this
        # ends any other way (timeout, dropped link, the caller's own
        # cancellation), the next command resynchronises first.
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
            entry = await self._exchange(b"SYST:ERR?", self.timeout)
            code, text = scpi.parse_error_entry(entry.decode("ascii", "replace"))
            if code == 0:
                break
            more.append(f"{code} {text}")
        return more

    # --- reconnecting -------------------------------------------------------------------

    async def _drop(self, why: str) -> None:
        if self._stream is not None:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            self._stream = None
            self.on_event("disconnected", why)

    async def _reconnect(self, *, first: bool = False) -> None:
        assert self._nursery is not None
        policy = self.reconnect_policy
        deadline = trio.current_time() + policy.give_up_after
        attempt = 0
        while True:
            try:
                self._stream = await self.endpoint.open(self._nursery)
                self._framer, self._ready = scpi.Framer(), []
                await self._resync()
            except (OSError, LinkError, trio.BrokenResourceError) as exc:
                if isinstance(exc, IdentityChanged):
                    raise
                if self._stream is not None:
                    with trio.CancelScope(shield=True):
                        await self._stream.aclose()
                    self._stream = None
                if first or trio.current_time() > deadline:
                    raise LinkError(f"{self.name}: cannot reach {self.endpoint.url}: {exc}") from exc
                await trio.sleep(policy.delay(attempt, self._rng))
                attempt += 1
                continue
            if not first:
                self.reconnects += 1
                log.warning("%s: reconnected to %s", self.name, self.endpoint.url)
                self.on_event("reconnected", self.endpoint.url)
            return

    async def _resync(self) -> None:
        """Forget whatever was in flight; make sure it is the same device.

        Replies to a command that timed out or was cancelled may still be on
        their way: ask the device to echo a fresh random token and discard
        everything before it. Then read the identity, twice if need be, so
        that one corrupted reply is not taken for a different device.
        """
        stream = self._stream
        assert stream is not None
        token = b"%d" % self._rng.randrange(10**9, 10**10)
        try:
            with trio.fail_after(self.timeout * 2):
                await stream.send_all(b"*CLS;:SYST:ECHO? " + token + b"\n")
                stale = 0
                while await self._read_message(stream) != token:
                    stale += 1
                if stale:
                    log.info("%s: discarded %d stale repl%s", self.name, stale, "y" if stale == 1 else "ies")
                identity = await self._identity(stream)
        except trio.TooSlowError:
            raise LinkError(f"{self.name}: no answer while resynchronising") from None
        if self.identity is not None and identity != self.identity:
            raise IdentityChanged(f"{self.name}: was {self.identity!r}, now answers {identity!r}; refused")
        self.identity = identity
        if self._dirty:
            self.on_event("resynchronised", identity)
        self._dirty = False

    async def _identity(self, stream: trio.abc.Stream) -> str:
        """``*IDN?``, asked until two answers agree (a flipped bit must not pass for a new device)."""
        answers: list[bytes] = []
        for _ in range(4):
            await stream.send_all(b"*IDN?\n")
            answers.append(await self._read_message(stream))
            if len(answers) >= 2 and answers[-1] == answers[-2]:
                return answers[-1].decode("ascii", "replace")
        raise LinkError(f"{self.name}: identity replies disagree: {answers}")


@asynccontextmanager
async def open_driver(url: str, **options: object) -> AsyncIterator[PhotonicaDriver]:
    """A connected driver for the device at ``url``; closed on exit."""
    driver = PhotonicaDriver(endpoint_from_url(url), **options)  # type: ignore[arg-type]
    failed: LinkError | None = None
    async with trio.open_nursery() as nursery:
        try:
            await driver.connect(nursery)
        except LinkError as exc:  # raised below, outside the nursery, so not in a group
            failed = exc
            await driver.aclose()
            nursery.cancel_scope.cancel()
        else:
            try:
                yield driver
            finally:
                await driver.aclose()
                nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed


def _bytes(command: str | bytes) -> bytes:
    return command.encode("ascii") if isinstance(command, str) else command


def _idempotent(message: bytes) -> bool:
    for parsed in scpi.parse_message(message):
        if isinstance(parsed, scpi.ScpiError):
            return False
        command = find_command(parsed.header, parsed.query)
        if command is None or not command.idempotent:
            return False
    return True


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


def shots_timeout(description: DeviceDescription | None, shots: int, base: float) -> float:
    """How long a run of ``shots`` may take to answer."""
    rate = description.shot_rate_hz if description is not None else 1e5
    return base + 2 * shots / rate + 1.0 if math.isfinite(rate) else base


def _description(reply: bytes) -> DeviceDescription:
    import msgspec

    try:
        return decode_description(scpi.unblock(reply))
    except msgspec.DecodeError as exc:
        raise ValueError(f"capabilities do not decode: {exc}") from exc
