"""The door: the one address of a running lab, and what clients may ask through it.

Decision 0014. A gateway (`runtime.Gateway`: one ROUTER on the data
directory's ipc socket and a loopback port) takes clients' requests: the
``door.*`` ones it answers itself, the allowlisted actor requests
(`protocol.door.FORWARDED`) it forwards with `Actor.request`, so that
``not-ready``, ``peer-lost`` and deadlines behave as inside the mesh. Events
reach clients that subscribed, pushed on the same socket. The door keeps
nothing that must survive it: a client that finds a new incarnation says
hello again.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from protocol import AwenError, ConfigError, Envelope, ErrorCode, Message, Request, convert_settings
from protocol.calibration import CalibrationStatus, GetCalibrationStatus
from protocol.calibration_model import CalibrationData
from protocol.door import (
    ANY_ACTOR,
    CLIENT_PROTOCOL,
    DOOR,
    FORWARDED,
    ActorStatus,
    GetLabStatus,
    GetResult,
    Hello,
    JobResult,
    JobWaited,
    LabStatus,
    Subscribe,
    WaitJob,
    Welcome,
    assemble_result,
)
from protocol.hal import ListDevices
from protocol.memory import (
    TERMINAL_STATES,
    Calibration,
    GetCalibration,
    GetJob,
    GetPlan,
    Job,
    JobRecord,
    QueryResults,
    Results,
    ResultsComplete,
    StoredPlan,
)
from protocol.paths import is_loopback
from protocol.plan import Plan
from protocol.scheduler import Submit
from protocol.system import GetStatus, Heartbeat, Ok, PeerUp, Ping, Pong
from runtime import Actor, Gateway, RemoteError, Runtime

log = logging.getLogger("awen.door")

LONG_REQUEST_S = {"cal.calibrate": 3600.0, "cal.check_reference": 600.0}
"""Forwarded requests that take long: the door waits this long for them (others: ``request_timeout``)."""

STATUS_TIMEOUT_S = 2.0

MAX_CLIENTS = 10_000
"""Clients the door keeps (name, route, subscriptions) between its lease sweeps: a flood of names is bounded."""

PLANS_KEPT = 256
"""Plans the door keeps, by id, to lay results out by (a plan never changes; a variational loop makes many)."""

MAX_DOOR_PREFIXES = 1024
"""Distinct event prefixes the door subscribes to for all its clients together (each stays subscribed)."""


class DoorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The door's ``config`` table.

    Attributes:
        endpoints: Where clients connect: ``ipc://PATH`` and loopback ``tcp://127.0.0.1:PORT``.
            Until clients authenticate, nothing else is allowed.
        lab: The lab's name, as clients are told.
        lease_s: A client silent this long loses its subscriptions.
        memory, hal, calibration: The actors the door reads jobs, devices and the calibration from.
    """

    endpoints: list[str]
    lab: str = "awen"
    lease_s: float = 30.0
    memory: str = "memory"
    hal: str = "hal"
    calibration: str = "calibration"

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("door: endpoints is empty: give at least one (ipc://... or tcp://127.0.0.1:PORT)")
        for endpoint in self.endpoints:
            if not is_loopback(endpoint):
                raise ConfigError(
                    f"door: refusing to listen on {endpoint}: clients are not authenticated yet, so the door "
                    "listens only on loopback and ipc (reach it from elsewhere with ssh -L)",
                    field="endpoints",
                )
        if not (0 < self.lease_s <= 3600):
            raise ConfigError(f"door: lease_s must be in (0, 3600], not {self.lease_s}", field="lease_s")


@dataclass
class _Client:
    route: Any
    name: str
    seen: float
    prefixes: list[str] = field(default_factory=list)


class DoorActor(Actor):
    """Clients' one address: forwards the allowlist, answers ``door.*``, pushes subscribed events."""

    KIND = "door"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime)
        self.config = convert_settings(config, DoorConfig, source=f"{name} configuration")
        self.gateway: Gateway | None = None
        self.clients: dict[str, _Client] = {}
        self._prefixes: set[str] = set()
        self._waiters: dict[str, set[trio.Event]] = {}
        self._kinds: dict[str, str] = {}
        self._plans: dict[str, Plan] = {}
        self._calibrations: dict[tuple[str, int], CalibrationData] = {}
        """Calibrations' data by (device, version), for the figures' predictions (decision 0017 §5)."""
        self._fetching: dict[str, trio.Event] = {}
        self._started = time.time()
        self._calibrated = False
        self._started_at = 0.0
        self._peers = [peer for peer in runtime.directory if peer != name]
        self.subscribe(ResultsComplete.TYPE, self._on_results_complete)
        self.subscribe(PeerUp.TYPE, self._on_peer_up)

    async def setup(self) -> None:
        self._started_at = trio.current_time()
        handlers: list[tuple[type[Message], Any]] = [
            (Hello, self._hello),
            (Subscribe, self._subscribe),
            (WaitJob, self._wait_job),
            (GetResult, self._get_result),
            (GetLabStatus, self._status),
        ]
        catalog = self.codec.catalog
        for msg_type in sorted(ANY_ACTOR.union(*FORWARDED.values())):
            handlers.append((catalog[msg_type], self._forward))
        self.gateway = await self.open_gateway(
            self.config.endpoints, handlers, recipients=self._takes, on_envelope=self._seen
        )
        self.start_soon(self._heartbeats)
        log.info("%s: clients connect at %s", self.name, ", ".join(self.gateway.addresses))

    # --- who is there ---------------------------------------------------------------------

    def _takes(self, to: str) -> bool:
        return to in self.runtime.directory

    def _seen(self, route: Any, env: Envelope) -> None:
        client = self.clients.get(env.sender)
        if client is None:
            self.clients[env.sender] = _Client(route=route, name=env.sender, seen=trio.current_time())
            if len(self.clients) > MAX_CLIENTS:  # a flood of names: the longest known goes (it says hello again)
                del self.clients[next(iter(self.clients))]
        else:
            client.route = route
            client.seen = trio.current_time()

    def _client_name(self, env: Envelope) -> str:
        client = self.clients.get(env.sender)
        return client.name if client is not None else env.sender

    async def _heartbeats(self) -> None:
        """Push a heartbeat to subscribed clients, and forget the ones silent past their lease."""
        seq = 0
        interval = self.options.heartbeat_interval
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for sender, client in list(self.clients.items()):
                if now - client.seen > self.config.lease_s:
                    del self.clients[sender]
                elif client.prefixes and self.gateway is not None:
                    beat = Heartbeat(
                        name=self.name,
                        pid=self.pid,
                        incarnation=self.incarnation,
                        seq=seq,
                        interval=interval,
                        uptime=now - self._started_at,
                    )
                    self.gateway.push(client.route, beat, to=sender)
            seq += 1

    # --- door.* -----------------------------------------------------------------------------

    async def _hello(self, msg: Hello, env: Envelope) -> Welcome:
        if msg.protocol != CLIENT_PROTOCOL:
            raise _error(
                ErrorCode.UNSUPPORTED_VERSION,
                f"this door speaks client protocol {CLIENT_PROTOCOL}, the client {msg.protocol}; upgrade the older",
                "protocol",
            )
        client = self.clients.get(env.sender)
        if client is not None and msg.client:
            client.name = msg.client
        await self._learn_kinds()
        forwards = {
            peer: sorted(ANY_ACTOR | FORWARDED.get(kind, frozenset()))
            for peer, kind in self._kinds.items()
            if peer != self.name
        }
        return Welcome(
            lab=self.config.lab,
            awen=_version(),
            protocol=CLIENT_PROTOCOL,
            incarnation=self.incarnation,
            pid=self.pid,
            started=self._started,
            actors=dict(self._kinds),
            devices=await self._devices(),
            endpoints=self.gateway.addresses if self.gateway is not None else [],
            forwards=forwards,
            heartbeat_s=self.options.heartbeat_interval,
            lease_s=self.config.lease_s,
            max_frame_bytes=self.options.max_frame_bytes,
        )

    async def _learn_kinds(self) -> None:
        missing = [peer for peer in self._peers if peer not in self._kinds]
        if not missing:
            return
        self._kinds[self.name] = self.KIND
        async with trio.open_nursery() as nursery:
            for peer in missing:
                nursery.start_soon(self._learn_kind, peer)

    async def _learn_kind(self, peer: str) -> None:
        with trio.move_on_after(STATUS_TIMEOUT_S):
            try:
                status = await self.request(peer, GetStatus())
            except AwenError:
                return
            self._kinds[peer] = status.kind

    async def _devices(self) -> list[str]:
        if self.config.hal not in self.runtime.directory:
            return []
        with trio.move_on_after(STATUS_TIMEOUT_S):
            try:
                reply = await self.request(self.config.hal, ListDevices())
            except AwenError:
                return []
            return [d.name for d in reply.devices]
        return []

    def _subscribe(self, msg: Subscribe, env: Envelope) -> Ok:
        client = self.clients[env.sender]  # _seen put it there
        prefixes = sorted(set(msg.prefixes))
        new = set(prefixes) - self._prefixes
        if len(self._prefixes) + len(new) > MAX_DOOR_PREFIXES:
            raise _error(
                ErrorCode.BAD_REQUEST,
                f"the door relays at most {MAX_DOOR_PREFIXES} distinct prefixes for all its clients; use shorter ones",
                "prefixes",
            )
        client.prefixes = prefixes
        for prefix in client.prefixes:
            if prefix not in self._prefixes:
                self._prefixes.add(prefix)
                self.subscribe(prefix, self._relay_for(prefix))
        return Ok()

    def _relay_for(self, prefix: str) -> Any:
        def relay(_body: Any, env: Envelope) -> None:
            if self.gateway is None:
                return
            frame: bytes | None = None
            for client in self.clients.values():
                # A client whose prefixes overlap gets an event once: from the first of them that matches.
                if prefix in client.prefixes and _first_match(client.prefixes, env.type) == prefix:
                    if frame is None:
                        frame = self.codec.encode(env)
                    self.gateway.push_frame(client.route, frame)

        return relay

    async def _wait_job(self, msg: WaitJob, env: Envelope) -> JobWaited:
        news = trio.Event()
        waiters = self._waiters.setdefault(msg.job, set())
        waiters.add(news)
        result: JobResult | None = None
        try:
            record = await self._record(msg.job)
            if msg.result:
                self._prefetch(record.plan)  # read while the job runs: its result is laid out by it
            with trio.move_on_after(msg.timeout_s):
                while record.state not in TERMINAL_STATES:
                    await news.wait()
                    news = self._renew(msg.job, news)
                    if msg.result:  # the record and the results in one read: usually the job has just ended
                        record, result = await self._read_result(msg.job)
                    else:
                        record = await self._record(msg.job)
        finally:
            waiters.discard(news)
            if not waiters:
                self._waiters.pop(msg.job, None)
        ended = record.state in TERMINAL_STATES
        if not (ended and msg.result):
            result = None
        elif result is None:  # it had ended before the wait
            record, result = await self._read_result(msg.job)
        return JobWaited(record=record, ended=ended, result=result)

    def _renew(self, job: str, old: trio.Event) -> trio.Event:
        new = trio.Event()
        waiters = self._waiters.setdefault(job, set())
        waiters.discard(old)
        waiters.add(new)
        return new

    def _on_results_complete(self, body: ResultsComplete, _env: Envelope) -> None:
        for news in self._waiters.get(body.job, ()):
            news.set()

    def _on_peer_up(self, body: PeerUp, _env: Envelope) -> None:
        if body.peer == self.config.memory:  # a restarted memory actor cannot announce what its predecessor ended
            for waiters in self._waiters.values():
                for news in waiters:
                    news.set()

    async def _record(self, job: str) -> JobRecord:
        reply: Job = await self._ask(self.config.memory, GetJob(job=job))
        return reply.record

    async def _get_result(self, msg: GetResult, env: Envelope) -> JobResult:
        return (await self._read_result(msg.job))[1]

    async def _read_result(self, job: str) -> tuple[JobRecord, JobResult]:
        """The job's record and its `JobResult`: one read of the store (and of its plan, unless kept)."""
        results: Results = await self._ask(self.config.memory, QueryResults(job=job, record=True))
        record = results.record
        assert record is not None  # asked for
        plan = None if record.plan is None else await self._plan(record.plan)
        calibration = None if record.calibration is None else await self._calibration(record.device, record.calibration)
        return record, assemble_result(record, plan, results.results, partial=results.partial, calibration=calibration)

    async def _calibration(self, device: str, version: int) -> CalibrationData | None:
        """A calibration's data by version, kept (a stored version never changes); None if it is gone."""
        key = (device, version)
        if key not in self._calibrations:
            try:
                found: Calibration = await self.request(
                    self.config.memory, GetCalibration(device=device, version=version)
                )
            except RemoteError as exc:
                if exc.code != ErrorCode.NOT_FOUND:
                    raise _error(exc.code, exc.remote_message, exc.field) from None
                return None
            self._calibrations[key] = found.data
            while len(self._calibrations) > PLANS_KEPT:
                del self._calibrations[next(iter(self._calibrations))]
        return self._calibrations[key]

    async def _plan(self, plan_id: str) -> Plan:
        """A plan by id: kept (a plan never changes), or being read already, or read now."""
        while plan_id not in self._plans:
            fetching = self._fetching.get(plan_id)
            if fetching is not None:
                await fetching.wait()
                continue
            self._fetching[plan_id] = trio.Event()
            try:
                stored: StoredPlan = await self._ask(self.config.memory, GetPlan(plan=plan_id))
                self._plans[plan_id] = stored.body
                while len(self._plans) > PLANS_KEPT:
                    del self._plans[next(iter(self._plans))]
            finally:
                self._fetching.pop(plan_id).set()
        return self._plans[plan_id]

    def _prefetch(self, plan_id: str | None) -> None:
        """Read a plan in the background, so that it is at hand when the job it is for ends."""
        if plan_id is not None and plan_id not in self._plans and plan_id not in self._fetching:
            self.start_soon(self._prefetch_plan, plan_id)

    async def _prefetch_plan(self, plan_id: str) -> None:
        try:
            await self._plan(plan_id)
        except AwenError as exc:  # the wait reads it again when it needs it
            log.debug("%s: could not read plan %s ahead: %s", self.name, plan_id, exc)

    async def _status(self, msg: GetLabStatus, env: Envelope) -> LabStatus:
        found: dict[str, ActorStatus] = {}

        async def ask(peer: str) -> None:
            try:
                with trio.fail_after(STATUS_TIMEOUT_S):
                    found[peer] = ActorStatus(name=peer, status=await self.request(peer, GetStatus()))
            except (AwenError, trio.TooSlowError) as exc:
                found[peer] = ActorStatus(name=peer, status=None, error=str(exc) or "no answer within 2 s")

        async with trio.open_nursery() as nursery:
            for peer in self._peers:
                nursery.start_soon(ask, peer)
        return LabStatus(
            lab=self.config.lab, actors=[ActorStatus(name=self.name, status=self.status()), *_in_order(found)]
        )

    # --- forwarding -------------------------------------------------------------------------

    async def _forward(self, msg: Request[Any], env: Envelope) -> Any:
        to = env.to
        if to == self.name and isinstance(msg, Ping | GetStatus):
            return (
                Pong(data=msg.data, pid=self.pid, incarnation=self.incarnation)
                if isinstance(msg, Ping)
                else self.status()
            )
        if to == DOOR or to == self.name:
            raise _error(ErrorCode.NO_HANDLER, f"the door does not answer {env.type}: address it to an actor", "to")
        if isinstance(msg, Submit):
            await self._calibrated_first()
            if msg.submitter is None:
                msg = msgspec.structs.replace(msg, submitter=self._client_name(env))
        return await self._ask(to, msg, wait_s=LONG_REQUEST_S.get(env.type))

    async def _calibrated_first(self) -> None:
        """While the lab makes its first calibration, a submission is answered ``not-ready`` (clients ask again).

        Run now, the job would fail for want of a calibration that is seconds away. Once the
        chip has had a valid calibration, this is never asked again.
        """
        if self._calibrated or self.config.calibration not in self.runtime.directory:
            return
        status: CalibrationStatus = await self._ask(self.config.calibration, GetCalibrationStatus())
        if status.valid or not status.calibrating:
            self._calibrated = status.valid
            return
        raise _error(ErrorCode.NOT_READY, f"{status.device} is being calibrated for the first time; ask again", None)

    async def _ask(self, to: str, msg: Request[Any], *, wait_s: float | None = None) -> Any:
        """``msg``'s reply from ``to``; its refusal relayed to the client as the actor said it."""
        try:
            if wait_s is None:
                return await self.request(to, msg)
            with trio.fail_after(wait_s):
                return await self.request(to, msg)
        except RemoteError as exc:
            raise _error(exc.code, exc.remote_message, exc.field) from None
        except trio.TooSlowError:
            raise _error(ErrorCode.TIMEOUT, f"{to} did not answer {msg.TYPE} within {wait_s:g} s", None) from None


def _error(code: str, message: str, field: str | None) -> AwenError:
    exc = AwenError(message, field=field)
    exc.code = code  # type: ignore[assignment]  # a code from another actor, passed on as it came
    return exc


def _first_match(prefixes: list[str], event_type: str) -> str | None:
    return next((p for p in prefixes if event_type.startswith(p)), None)


def _in_order(found: dict[str, ActorStatus]) -> Iterator[ActorStatus]:
    for name in sorted(found):
        yield found[name]


def _version() -> str:
    try:
        return importlib.metadata.version("awen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
