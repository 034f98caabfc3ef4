"""The web actor: one HTTP port for probes, metrics and the lab page (decision 0015 §1, §2, §5).

Hypercorn's trio worker serves a Starlette app inside the actor's own trio
loop (no thread, no second loop), so a route asks the lab's actors with
`Actor.request`, as the door does. The actor keeps what it hears: each
actor's last heartbeat (freshness, ``/readyz``; its metrics, ``/metrics``),
the running job's progress (``exec.progress``), and a change counter that
``/events`` follows. Everything else is asked for when a page wants it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from actors.health import Check, LabActors, lab_checks
from protocol import AwenError, ConfigError, Envelope, Request, convert_settings
from protocol.calibration import CalibrationStatus, GetCalibrationStatus
from protocol.door import assemble_result
from protocol.executor import JobEnded, JobStarted, Progress
from protocol.hal import DeviceInfo, DeviceStatus, GetDeviceStatus, GetHeaters, Heaters, ListDevices
from protocol.memory import GetCalibration, GetPlan, JobRecord, QueryEvents, QueryJobs, QueryResults
from protocol.paths import is_loopback
from protocol.scheduler import GetQueue, QueueState
from protocol.system import Heartbeat, Metric
from runtime import Actor, RemoteError, Runtime

from ._app import make_app
from ._metrics import HeartbeatCollector, render

log = logging.getLogger("awen.web")

CHECK_TIMEOUT_S = 2.0
"""Each readiness check, and each question the state asks an actor, waits this long."""

RECENT_JOBS = 20
STATE_TTL_S = 0.25
"""The lab page's state is built at most this often, for every open page together."""
DEVICE_REFRESH_S = 2.0
"""A device's heaters and status are read at most this often (over its link, beside the running job)."""
"""How far back the recent jobs are looked for: the first window holding enough of them."""

DRIFT_POINTS = 1000
DRIFT_HISTORY_S = 30 * 86400.0

CHANGE_PREFIXES = ("exec.", "sched.", "mem.job_state_changed", "mem.results_complete", "mem.calibration_added")
CHANGE_PREFIXES_MORE = ("cal.", "hal.", "peer.", "actor.")
"""Events after which the page's state may differ: ``/events`` sends it again."""

STATE_JOB_FIELDS = ("job", "state", "submitted", "shots", "tags")


class WebConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The web actor's ``config`` table.

    Attributes:
        listen: ``HOST:PORT`` to serve HTTP on (port 0: any free one, for tests).
        allow_remote: Listen on a non-loopback host (nothing is authenticated: put a proxy in front).
        lab: The lab's name, as the page shows it.
        memory, hal, scheduler, calibration, door: The actors the state and the checks are asked of.
        stale_after_s: A heartbeat older than this is stale (default: ``heartbeat_interval * liveness``).
        address_file: Where to write the URL served at once bound (what a test with port 0 reads).
    """

    listen: str = "127.0.0.1:7461"
    allow_remote: bool = False
    lab: str = "awen"
    memory: str = "memory"
    hal: str = "hal"
    scheduler: str = "scheduler"
    calibration: str = "calibration"
    door: str = "door"
    stale_after_s: float | None = None
    address_file: str | None = None

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"web: listen must be HOST:PORT, not {self.listen!r}", field="listen")
        if not self.allow_remote and not is_loopback(f"tcp://{self.listen}"):
            raise ConfigError(
                f"web: refusing to listen on {self.listen}: nothing is authenticated, so the web actor listens "
                "only on loopback unless allow_remote = true (or reach it with ssh -L 7461:127.0.0.1:7461 HOST)",
                field="listen",
            )
        if self.stale_after_s is not None and not (0 < self.stale_after_s <= 3600):
            raise ConfigError(
                f"web: stale_after_s must be in (0, 3600], not {self.stale_after_s}", field="stale_after_s"
            )


class WebActor(Actor):
    """The lab's HTTP port: ``/livez``, ``/readyz``, ``/metrics``, ``/api/state``, ``/events``, the page."""

    KIND = "web"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        self._state_lock = trio.Lock()
        self._state_cache: tuple[float, dict[str, Any]] | None = None
        self._devices_cache: tuple[float, list[dict[str, Any]]] | None = None
        super().__init__(name, runtime)
        self.config = convert_settings(config, WebConfig, source=f"{name} configuration")
        self.url: str | None = None
        self._peers = [peer for peer in runtime.directory if peer != name]
        self._seen: dict[str, tuple[float, int]] = {}
        """Per actor, when its last heartbeat came (trio time) and its incarnation."""
        self._metrics: dict[str, list[Metric]] = {}
        self._running: dict[str, Any] | None = None
        self._drift: deque[list[float]] = deque(maxlen=DRIFT_POINTS)
        self._drift_seq = 0
        self._drift_lock = trio.Lock()
        self.version = 0
        """Counts the events after which the state may have changed (``/events`` follows it)."""
        self._changed = trio.Event()
        self._shutdown = trio.Event()
        self.collector = HeartbeatCollector(lambda: self._metrics, self.up)
        self.subscribe(Heartbeat.TYPE, self._on_heartbeat)
        self.subscribe(Progress.TYPE, self._on_progress)
        self.subscribe(JobStarted.TYPE, self._on_job_started)
        self.subscribe(JobEnded.TYPE, self._on_job_ended)
        for prefix in (*CHANGE_PREFIXES, *CHANGE_PREFIXES_MORE):
            self.subscribe(prefix, self._on_change)

    async def setup(self) -> None:
        config = HypercornConfig()
        config.bind = [self.config.listen]
        config.accesslog = None
        config.errorlog = logging.getLogger("awen.web.http")
        config.graceful_timeout = 1.0
        static = Path(__file__).parent / "static"
        app = make_app(self, static if static.is_dir() else None)
        asgi: Any = app  # Starlette is an ASGI app; hypercorn's type names its scopes more narrowly
        binds: list[str] = await self.start(partial(serve, asgi, config, shutdown_trigger=self._shutdown.wait))
        self.url = binds[0] if binds else f"http://{self.config.listen}"
        if self.config.address_file is not None:
            _write_atomically(Path(self.config.address_file), self.url + "\n")
        log.info("web: %s", self.url)

    async def teardown(self) -> None:
        self._shutdown.set()

    # --- what the actor hears -----------------------------------------------------------------

    def _on_heartbeat(self, beat: Heartbeat, _env: Envelope) -> None:
        seen = self._seen.get(beat.name)
        if seen is not None and seen[1] != beat.incarnation:
            self._metrics.pop(beat.name, None)  # a new incarnation: its predecessor's counts are gone
        self._seen[beat.name] = (trio.current_time(), beat.incarnation)
        if beat.metrics is not None:
            self._metrics[beat.name] = list(beat.metrics)

    def _on_progress(self, body: Progress, _env: Envelope) -> None:
        self._running = {
            "job": body.job,
            "phase": body.phase,
            "phases": body.phases,
            "shots_done": body.shots_done,
            "shots_total": body.shots_total,
            "eta_s": body.eta_s,
        }

    def _on_job_started(self, body: JobStarted, _env: Envelope) -> None:
        self._running = {
            "job": body.job,
            "phase": body.start_phase,
            "phases": None,
            "shots_done": 0,
            "shots_total": None,
            "eta_s": None,
        }

    def _on_job_ended(self, body: JobEnded, _env: Envelope) -> None:
        if self._running is not None and self._running["job"] == body.job:
            self._running = None

    def _on_change(self, _body: Any, _env: Envelope) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, version: int) -> None:
        """Until ``version`` is not the current one."""
        while self.version == version:
            await self._changed.wait()

    # --- liveness and readiness ---------------------------------------------------------------

    @property
    def stale_after_s(self) -> float:
        if self.config.stale_after_s is not None:
            return self.config.stale_after_s
        return self.options.heartbeat_interval * self.options.liveness

    def heartbeat_age(self, peer: str) -> float | None:
        """Seconds since ``peer``'s last heartbeat; None if none came."""
        if peer == self.name:
            return 0.0
        seen = self._seen.get(peer)
        return None if seen is None else trio.current_time() - seen[0]

    def up(self) -> dict[str, bool]:
        """Every actor of the lab (this one too): whether its heartbeats are fresh."""
        ages = {peer: self.heartbeat_age(peer) for peer in [self.name, *self._peers]}
        return {peer: age is not None and age <= self.stale_after_s for peer, age in ages.items()}

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """``/readyz``'s checks, by name: ``{"ok", "detail"}`` each (`actors.health`), asked at once."""
        heartbeats: dict[str, Check] = {}
        for peer in sorted(self._peers):
            age = self.heartbeat_age(peer)
            fresh = age is not None and age <= self.stale_after_s
            heartbeats[peer] = Check(fresh, "no heartbeat yet" if age is None else f"last heartbeat {age:.1f} s ago")
        lab = LabActors(
            memory=[n for n in (self.config.memory,) if n in self._peers],
            hal=[n for n in (self.config.hal,) if n in self._peers],
            calibration=[n for n in (self.config.calibration,) if n in self._peers],
        )
        checks = await lab_checks(self, lab, heartbeats=heartbeats)
        return {name: {"ok": check.ok, "detail": check.detail} for name, check in checks.items()}

    def metrics_text(self) -> bytes:
        return render(self.collector)

    # --- the page's state -----------------------------------------------------------------------

    async def state(self) -> dict[str, Any]:
        """``/api/state``: what the lab page shows, at most `STATE_TTL_S` old.

        One state for every open page and stream: however many tabs follow ``/events``, the actors
        are asked at most once per `STATE_TTL_S`, and the device's heaters (a read over its link,
        beside a running job's shots) at most once per `DEVICE_REFRESH_S`.
        """
        async with self._state_lock:
            cached = self._state_cache
            if cached is not None and trio.current_time() - cached[0] < STATE_TTL_S:
                return cached[1]
            state = await self._build_state()
            self._state_cache = (trio.current_time(), state)
            return state

    async def _build_state(self) -> dict[str, Any]:
        """The state, asked of the actors at once (a part that fails is null)."""
        parts: dict[str, Any] = {}

        async def get(key: str, fn: Any) -> None:
            try:
                with trio.fail_after(CHECK_TIMEOUT_S * 2):
                    parts[key] = await fn()
            except (AwenError, trio.TooSlowError) as exc:
                log.debug("%s: state: %s: %s", self.name, key, exc)
                parts[key] = None

        async with trio.open_nursery() as nursery:
            nursery.start_soon(get, "queue", self._queue)
            nursery.start_soon(get, "recent", self._recent)
            nursery.start_soon(get, "devices", self._devices)
            nursery.start_soon(get, "calibration", self._calibration)
        queue: QueueState | None = parts["queue"]
        running = self._running
        if queue is not None:
            if queue.running is None:
                running = None
            elif running is None or running["job"] != queue.running:
                running = {"job": queue.running, "phase": None, "phases": None}
                running |= {"shots_done": None, "shots_total": None, "eta_s": None}
        return {
            "lab": self.config.lab,
            "time": time.time(),
            "running": running,
            "queue": None if queue is None else msgspec.to_builtins(queue.jobs),
            "paused": None if queue is None else queue.paused,
            "recent": parts["recent"],
            "devices": parts["devices"],
            "calibration": parts["calibration"],
        }

    async def _queue(self) -> QueueState | None:
        if self.config.scheduler not in self._peers:
            return None
        return await self.request(self.config.scheduler, GetQueue())

    async def _recent(self) -> list[dict[str, Any]] | None:
        if self.config.memory not in self._peers:
            return None
        jobs: list[JobRecord] = (await self.request(self.config.memory, QueryJobs(limit=RECENT_JOBS, newest=True))).jobs
        return [{key: getattr(r, key) for key in STATE_JOB_FIELDS} for r in jobs]

    async def _devices(self) -> list[dict[str, Any]] | None:
        if self.config.hal not in self._peers:
            return None
        cached = self._devices_cache
        if cached is not None and trio.current_time() - cached[0] < DEVICE_REFRESH_S:
            return cached[1]
        found = await self._read_devices()
        self._devices_cache = (trio.current_time(), found)
        return found

    async def _read_devices(self) -> list[dict[str, Any]]:
        listed = (await self.request(self.config.hal, ListDevices())).devices
        found: list[dict[str, Any]] = [{} for _ in listed]

        async def one(i: int, info: DeviceInfo) -> None:
            found[i] = await self._device(info)

        async with trio.open_nursery() as nursery:
            for i, info in enumerate(listed):
                nursery.start_soon(one, i, info)
        return found

    async def _device(self, info: DeviceInfo) -> dict[str, Any]:
        device: dict[str, Any] = {
            "name": info.name,
            "state": info.state,
            "identity": info.identity,
            "detail": info.detail,
            "heaters": None,
            "interlock": None,
        }
        if info.state not in ("connected", "interlocked"):
            return device
        try:
            status: DeviceStatus = await self.request(self.config.hal, GetDeviceStatus(device=info.name))
            device["interlock"] = status.interlock
            device["temperature_c"] = status.temperature_c
            heaters: Heaters = await self.request(self.config.hal, GetHeaters(device=info.name))
            device["heaters"] = [float(v) for v in heaters.volts]
        except AwenError as exc:
            device["detail"] = str(exc)
        return device

    async def _calibration(self) -> dict[str, Any] | None:
        if self.config.calibration not in self._peers:
            return None
        status: CalibrationStatus = await self.request(self.config.calibration, GetCalibrationStatus())
        if self.config.memory in self._peers:
            await self._read_drift()
        return {
            "device": status.device,
            "version": status.version,
            "age_s": status.age_s,
            "valid": status.valid,
            "calibrating": status.calibrating,
            "last_error": status.last_error,
            "drift": list(self._drift),
        }

    async def _read_drift(self) -> None:
        """The reference checks (``cal.reference``) logged since the last read: the drift history."""
        async with self._drift_lock:
            since = time.time() - DRIFT_HISTORY_S if self._drift_seq == 0 else None
            while True:
                query = QueryEvents(prefix="cal.reference", since=since, after_seq=self._drift_seq, limit=DRIFT_POINTS)
                events = (await self.request(self.config.memory, query)).events
                for event in events:
                    self._drift_seq = max(self._drift_seq, event.seq)
                    fidelity = event.body.get("fidelity") if isinstance(event.body, dict) else None
                    if event.type == "cal.reference" and isinstance(fidelity, int | float):
                        self._drift.append([event.ts, float(fidelity)])
                if len(events) < DRIFT_POINTS:
                    return

    async def result(self, job: str) -> Any:
        """``/api/jobs/{id}/result``: the job's `protocol.door.JobResult`, as the door assembles it."""
        results = await self.request(self.config.memory, QueryResults(job=job, record=True))
        record = results.record
        assert record is not None  # asked for
        plan = None if record.plan is None else (await self.request(self.config.memory, GetPlan(plan=record.plan))).body
        calibration = None
        if record.calibration is not None:
            with contextlib.suppress(RemoteError):  # gone from the store: the figures go without its prediction
                got = GetCalibration(device=record.device, version=record.calibration)
                calibration = (await self.request(self.config.memory, got)).data
        return assemble_result(record, plan, results.results, partial=results.partial, calibration=calibration)

    async def ask(self, to: str, msg: Request[Any]) -> Any:
        with trio.fail_after(CHECK_TIMEOUT_S):
            return await self.request(to, msg)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)
