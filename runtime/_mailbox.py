"""The mailbox: what arrives at an actor's address, handed to its handler, and each request answered.

A frame that cannot be read is answered with its error code if it may be a
request (never if its header names a notice, reply or event). A readable one
is refused while the actor starts (``not-ready``, but for `ANSWERED_WHILE_STARTING`)
or stops (``actor-stopped``), or when it is addressed to another actor or of
a type nobody here handles. Otherwise its handler runs: a plain function
inline, at once; an ``async def`` (or the awaitable a plain one returns) as a
task, up to ``max_concurrent`` at a time, after which the mailbox stops
reading and the transport's high-water mark pushes back on senders. Each
handler runs with the message's trace (its ``trace``, or its own id when it
has none: it starts one) and its body's ``job`` set (`runtime._trace`).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from protocol import (
    MAX_ERROR_TEXT,
    AwenError,
    Codec,
    Envelope,
    ErrorCode,
    FrameTooLarge,
    Notice,
    ProtocolError,
    Reply,
    Request,
    clip,
    make_envelope,
)
from protocol.system import Error, GetStatus, Ok, Ping, bounded_error

from ._handlers import Handler, Handlers
from ._lifecycle import Lifecycle
from ._logging import RateLimitedLog
from ._trace import current_job, current_trace, job_of
from ._transport import Inbound, Transport

log = logging.getLogger("awen.actor")

ANSWERED_WHILE_STARTING = frozenset({Ping.TYPE, GetStatus.TYPE})
"""Requests an actor answers before its `setup` has run; every other one is answered ``not-ready``."""


class Mailbox:
    """An actor's inbound endpoint, the dispatch of what comes in, and the answers that go back.

    Attributes:
        handled: Messages whose handler has finished.
        failed: Handlers that raised, or returned the wrong reply type.
        malformed: Frames that could not be read, or whose reading failed.
        in_flight: Handlers running as tasks now.
    """

    def __init__(
        self,
        name: str,
        codec: Codec,
        handlers: Handlers,
        *,
        max_concurrent: int,
        next_id: Callable[[], int],
        life: Lifecycle,
        bad_frames: RateLimitedLog,
        recipients: Callable[[str], bool] | None = None,
        on_envelope: Callable[[Any, Envelope], None] | None = None,
    ) -> None:
        self._name = name
        self._recipients = recipients
        self._on_envelope = on_envelope
        self._codec = codec
        self._handlers = handlers
        self._max_concurrent = max_concurrent
        self._next_id = next_id
        self._life = life
        self._bad_frames = bad_frames
        self.inbound: Inbound | None = None
        self._unanswered: dict[int, tuple[Any, Envelope]] = {}
        """Requests whose handler runs as a task: answered ``actor-stopped`` if the actor stops first."""
        self._tokens = itertools.count()
        self.handled = 0
        self.failed = 0
        self.malformed = 0
        self.in_flight = 0

    async def bind(
        self, transport: Transport, io: trio.Nursery, address: str | Sequence[str], *, handover: bool = False
    ) -> None:
        """Open the inbound endpoint at ``address`` (or several); its receiving task runs in ``io``."""
        self.inbound = await transport.bind(io, address, self.on_request, handover=handover)

    def close(self) -> None:
        if self.inbound is not None:
            self.inbound.close()

    def refuse_unanswered(self) -> None:
        """Answer every request still being handled ``actor-stopped``: the actor stops without its answer."""
        for route, env in self._unanswered.values():
            self._reply(
                route,
                env,
                Error(code=ErrorCode.ACTOR_STOPPED, message=f"{self._name} stopped before answering {env.type}"),
            )
        self._unanswered.clear()

    # --- receiving --------------------------------------------------------------------------

    def on_request(self, route: Any, frame: bytes) -> None:
        """Take one frame; called by the transport's receiving task with the route its reply goes back by."""
        # Whatever goes wrong here must cost this frame, never the actor (and with it, for the
        # supervisor, the system).
        try:
            self._receive(route, frame)
        except Exception:
            self.malformed += 1
            log.exception("%s: could not take a frame of %d bytes; dropped it", self._name, len(frame))

    def _receive(self, route: Any, frame: bytes) -> None:
        try:
            env = self._codec.decode(frame)
        except ProtocolError as exc:
            self.malformed += 1
            self._bad_frames.warning("%s: refused a frame: %s", self._name, exc)
            if _answers_refusal(exc):
                self._reply_error(route, exc.code, exc.message, exc.field, re=exc.request_id, to=exc.sender or "?")
            return
        if self._on_envelope is not None:
            self._on_envelope(route, env)
        body = env.body
        is_request = isinstance(body, Request)
        if not is_request and not isinstance(body, Notice):
            self._bad_frames.warning("%s: %s (%s) was sent to its address; dropped", self._name, env.type, body.KIND)
            return
        entry = self._handlers.get(env.type)
        life = self._life
        if entry is None or life.stopping or not life.serving or not self._addressed(env.to):  # rarely: one test
            refusal = self._refusal(env, is_request, entry is not None)
            if refusal is not None:
                if is_request:
                    self._reply(route, env, refusal)
                return
        handler, inline = entry  # type: ignore[misc]  # there is one, or _refusal said why not
        rest: Awaitable[Reply | None] | None = None
        if inline:
            trace = current_trace.set(env.trace if env.trace is not None else env.id)
            job = current_job.set(job_of(body))
            try:
                result = handler(body, env)
            except Exception as exc:  # noqa: BLE001 - a handler's bug must not stop the actor
                self.handled += 1
                self._answer_failure(route, env, exc)
                return
            finally:
                current_job.reset(job)
                current_trace.reset(trace)
            if not inspect.isawaitable(result):
                self.handled += 1
                if is_request:
                    self._answer(route, env, result)
                return
            rest = result  # the quick part is done; the rest needs to wait, so it runs as a task
        self.in_flight += 1
        if self.in_flight >= self._max_concurrent and self.inbound is not None:
            self.inbound.pause()
        assert life.work is not None
        life.work.start_soon(self._run_handler, handler, route, env, rest)

    def _addressed(self, to: str) -> bool:
        """Whether a message to ``to`` is this mailbox's: its actor's, or (a gateway's) one it takes for others."""
        return to == self._name or (self._recipients is not None and self._recipients(to))

    def _refusal(self, env: Envelope, is_request: bool, handled: bool) -> Error | None:
        """Why this message is not handled (the error a request is answered with), or None if it is."""
        life = self._life
        if life.stopping:
            return Error(code=ErrorCode.ACTOR_STOPPED, message=f"{self._name} is stopping")
        if not life.serving and is_request and env.type not in ANSWERED_WHILE_STARTING:
            return Error(code=ErrorCode.NOT_READY, message=f"{self._name} is starting; ask again shortly")
        if not self._addressed(env.to):
            return Error(
                code=ErrorCode.WRONG_RECIPIENT,
                message=f"this is {self._name}, the message is addressed to {env.to!r}",
                field="to",
            )
        if not handled:
            if not is_request:
                log.debug("%s: no handler for notice %s", self._name, env.type)
            return Error(code=ErrorCode.NO_HANDLER, message=f"{self._name} does not handle {env.type}", field="type")
        return None

    async def _run_handler(
        self, handler: Handler, route: Any, env: Envelope, rest: Awaitable[Reply | None] | None = None
    ) -> None:
        token = next(self._tokens)
        # The task's own context (trio copies it at the start): set, never reset.
        current_trace.set(env.trace if env.trace is not None else env.id)
        current_job.set(job_of(env.body))
        if isinstance(env.body, Request):
            self._unanswered[token] = (route, env)
        try:
            result = await (rest if rest is not None else handler(env.body, env))  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a handler's bug must not stop the actor
            self._unanswered.pop(token, None)
            self._answer_failure(route, env, exc)
        else:
            if self._unanswered.pop(token, None) is not None:
                self._answer(route, env, result)
        finally:
            self.handled += 1
            self.in_flight -= 1
            if self.in_flight == self._max_concurrent - 1 and self.inbound is not None:
                self.inbound.resume()

    # --- answering --------------------------------------------------------------------------

    def _answer(self, route: Any, env: Envelope, result: Reply | None) -> None:
        expected = type(env.body).REPLY
        if result is None and expected is Ok:
            result = Ok()
        if not isinstance(result, expected | Error):
            got = "nothing" if result is None else type(result).__qualname__
            log.error("%s: handler for %s returned %s, not %s", self._name, env.type, got, expected.__qualname__)
            self.failed += 1
            result = Error(
                code=ErrorCode.HANDLER_FAILED, message=f"{self._name}'s handler for {env.type} returned {got}"
            )
        self._reply(route, env, result)

    def _answer_failure(self, route: Any, env: Envelope, exc: Exception) -> None:
        self.failed += 1
        if isinstance(exc, AwenError):
            # A refusal is the requester's to handle; a lookup that finds nothing or a "not yet" is routine.
            level = logging.DEBUG if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.NOT_READY) else logging.INFO
            log.log(
                level, "%s: %s from %s failed: %s", self._name, env.type, env.sender, clip(str(exc), MAX_ERROR_TEXT)
            )
            error = Error(code=exc.code, message=exc.message, field=exc.field)
        else:
            log.error("%s: handler for %s raised", self._name, env.type, exc_info=exc)
            error = Error(code=ErrorCode.HANDLER_FAILED, message=f"{self._name}: {type(exc).__name__}: {exc}")
        if isinstance(env.body, Request):
            self._reply(route, env, error)

    def _reply(self, route: Any, request: Envelope, body: Reply) -> None:
        self._send_reply(route, body, to=request.sender, re=request.id)

    def _reply_error(self, route: Any, code: str, message: str, field: str | None, *, re: int | None, to: str) -> None:
        self._send_reply(route, Error(code=code, message=message, field=field), to=to, re=re)

    def _send_reply(self, route: Any, body: Reply, *, to: str, re: int | None) -> None:
        if self.inbound is None:
            return
        name = self._name
        if isinstance(body, Error):
            body = bounded_error(body)
        env = make_envelope(body, sender=name, to=to, id=self._next_id(), re=re)
        try:
            frame = self._codec.encode(env)
        except FrameTooLarge as exc:
            log.warning("%s: the reply %s to %s is too large to send: %s", name, body.TYPE, clip(to, 80), exc)
            error = Error(
                code=ErrorCode.TOO_LARGE,
                message=f"{name}: its reply ({body.TYPE}) would be too large: {exc.message}; ask for less",
            )
            frame = self._codec.encode(make_envelope(error, sender=name, to=to, id=self._next_id(), re=re))
        except (AwenError, TypeError, ValueError) as exc:
            log.error("%s: cannot encode the reply %s: %s", name, body.TYPE, clip(str(exc), MAX_ERROR_TEXT))
            error = bounded_error(
                Error(code=ErrorCode.HANDLER_FAILED, message=f"{name} could not encode its reply: {exc}")
            )
            frame = self._codec.encode(make_envelope(error, sender=name, to=to, id=self._next_id(), re=re))
        self.inbound.reply(route, frame)


def _answers_refusal(exc: ProtocolError) -> bool:
    """Whether a frame that could not be read is answered: not if its header names a notice, reply or event.

    A notice gets no reply, even on error, and replies and events are never
    answered; a frame whose type is unknown or unreadable might be a request,
    and is answered.
    """
    kind = exc.message_kind
    return kind is None or kind == Request.KIND
