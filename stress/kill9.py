"""A kill -9 campaign: does every accepted job survive the death of any actor?

Starts a simulator process (``awen sim serve`` on a loopback TCP port) and
``awen up`` with the standard five actors (memory, hal, scheduler, executor,
calibration; each its own process) on it, calibrates the chip if the store has
no valid calibration, then submits jobs (Hong-Ou-Mandel on 2 modes, 3 or 4
photons through a small mesh, a HOM with its reference as a second phase),
each with an id of its own so that a submission whose reply was lost can be
repeated. While they run it kills actors with SIGKILL, at moments and in an
order drawn from the seed, each time waiting for the supervisor to restart the
actor (sometimes not: two kills in quick succession), and finally checks every
accepted job in the store: its end, and its shots counted over every frame of
every phase against the shots asked.

Run it from a checkout with the venv installed::

    .venv/bin/python stress/kill9.py --jobs 20 --kills 10 --seed 1
    .venv/bin/python stress/kill9.py --jobs 4 --kills 3 --actors executor --shots-min 20000 --shots-max 40000
    .venv/bin/python stress/kill9.py ... --json            # one JSON document on stdout
    .venv/bin/python stress/kill9.py ... --keep /tmp/k9     # keep the data, the logs and the chip's audit record

Exit status 0 only if every accepted job completed with exactly the shots it
asked for in every phase, and none was lost; 1 otherwise; 2 if the campaign
could not start (the stack did not come up, no calibration). Every process it
started is stopped on the way out, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import trio  # noqa: E402

import sim  # noqa: E402
from actors.jobs import wait_for_job  # noqa: E402
from actors.lab import LAB_ACTORS, lab_system, system_toml  # noqa: E402
from actors.scheduler import compile_circuit  # noqa: E402
from awen.run import prepare  # noqa: E402
from protocol import AwenError, Envelope, ErrorCode, Reply, Request  # noqa: E402
from protocol.calibration import Calibrate, GetCalibrationStatus  # noqa: E402
from protocol.circuit import Circuit, CircuitBuilder  # noqa: E402
from protocol.memory import TERMINAL_STATES, GetJob, GetPlan, JobRecord, QueryJobs, QueryResults  # noqa: E402
from protocol.plan import Plan  # noqa: E402
from protocol.results import parse_result_slot, result_slot  # noqa: E402
from protocol.scheduler import Submit  # noqa: E402
from protocol.system import GetStatus, Ping  # noqa: E402
from runtime import Actor, RemoteError, ResolvedSystem, RestartPolicy, RuntimeOptions, SystemConfig  # noqa: E402

ACTORS = LAB_ACTORS
ENDED = TERMINAL_STATES
REFUSED = {ErrorCode.INVALID, ErrorCode.INVALID_CIRCUIT, ErrorCode.BAD_REQUEST}
"""Submission errors that no repetition changes: the job is not accepted."""
TRANSIENT = {
    ErrorCode.ACTOR_STOPPED,
    ErrorCode.PEER_LOST,
    ErrorCode.TIMEOUT,
    ErrorCode.UNAVAILABLE,
    ErrorCode.STORE_UNAVAILABLE,
    ErrorCode.NOT_READY,
}
"""Error replies that a restart explains: the request is repeated (reads only; a submission is repeated on any)."""

R = TypeVar("R", bound=Reply)

STOP_GRACE_S = 60.0
"""How long ``awen up`` gets after SIGTERM (it stops five actors in turn, each with a grace of its own)."""
ASK_S = 10.0
"""One request's deadline; a request that fails for a reason a restart explains is repeated."""
RETRY_S = 120.0
"""How long a request is repeated before the campaign reports it as unanswered."""
BACK_S = 120.0
"""How long a killed actor has to answer again (a new pid) before the campaign reports it missing."""


@dataclass(frozen=True)
class Options:
    """One campaign: the command line's options, and a few more for tests."""

    jobs: int = 20
    kills: int = 10
    seed: int = 1
    actors: tuple[str, ...] = ACTORS
    shots_min: int = 20_000
    shots_max: int = 200_000
    modes: int = 4
    shot_rate_hz: float = 1e6
    """The simulated chip's shots per second, which it takes in real time: lower makes jobs long enough that
    every kill lands inside one, whatever the speed of the machine."""
    window: tuple[float, float] = (0.02, 0.9)
    """Kills are sent when this fraction of the campaign's shots is done, drawn uniformly within it."""
    burst: float = 0.2
    """Chance that a kill follows the previous one at once (within 0.5 s), without waiting for its restart."""
    submit_gap: float = 0.5
    """Submissions are spread out, each within this many seconds of the previous one."""
    timeout: float = 900.0
    """Seconds, from the first submission, for every accepted job to end."""
    keep: Path | None = None
    log_level: str = "info"


# --- what is submitted, and what is killed when ----------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    job: str
    kind: str
    circuit: Circuit


def make_jobs(options: Options, run_token: str) -> list[JobSpec]:
    """The campaign's jobs: a seeded mix of circuits and shot counts, ids unique to this run."""
    rng = random.Random(options.seed * 7919 + 1)
    specs = []
    for i in range(options.jobs):
        kind = rng.choice(("hom", "photons", "two-phase"))
        shots = rng.randint(options.shots_min, options.shots_max)
        name = f"k9-{kind}"
        if kind == "hom":
            circuit = CircuitBuilder(2, shots=shots, name=name).input(0).input(1).bs(0, 1).measure([0, 1], "c").build()
        elif kind == "photons":
            photons = rng.choice((3, 4))
            builder = CircuitBuilder(4, shots=shots, name=name)
            for mode in range(photons):
                builder.input(mode)
            theta = [rng.uniform(0.2, 1.4) for _ in range(3)]
            circuit = (
                builder.bs(0, 1)
                .mzi(1, 2, theta[0], rng.uniform(0, math.pi))
                .bs(2, 3)
                .mzi(0, 1, theta[1])
                .mzi(2, 3, theta[2])
                .measure([0, 1, 2, 3], "c")
                .build()
            )
        else:  # the HOM dip and its reference (no coupler): two rounds, two phases
            circuit = (
                CircuitBuilder(2, shots=shots, name=name)
                .input(0)
                .input(1)
                .bs(0, 1)
                .measure([0, 1], "hom")
                .input(0)
                .input(1)
                .measure([0, 1], "reference")
                .build()
            )
        specs.append(JobSpec(job=f"k9-{options.seed}-{run_token}-{i:03d}", kind=kind, circuit=circuit))
    return specs


@dataclass(frozen=True)
class PlannedKill:
    actor: str
    at_work: float
    """When: the fraction of the campaign's shots done (every phase of every job) when the kill is sent.

    A moment measured in work, not in seconds: on a fast or a slow machine, the same seed interrupts
    the same stretch of the same job (the simulated chip fires a million shots a second, so a
    schedule in seconds would mostly find the queue empty).
    """
    at_once: bool = False
    """Sent ``delay_s`` after the previous kill, without waiting for that actor to come back."""
    delay_s: float = 0.0


def kill_schedule(options: Options) -> list[PlannedKill]:
    """Which actor dies when, drawn from the seed alone."""
    rng = random.Random(options.seed * 7919 + 2)
    moments = sorted(rng.uniform(*options.window) for _ in range(options.kills))
    plan: list[PlannedKill] = []
    for at_work in moments:
        previous = plan[-1] if plan else None
        others = [a for a in options.actors if previous is None or a != previous.actor]
        if previous is not None and others and rng.random() < options.burst:
            plan.append(
                PlannedKill(
                    actor=rng.choice(others), at_work=previous.at_work, at_once=True, delay_s=rng.uniform(0, 0.5)
                )
            )
        else:
            plan.append(PlannedKill(actor=rng.choice(options.actors), at_work=at_work))
    return plan


# --- the processes ---------------------------------------------------------------------------------


class Child:
    """A process this campaign started: its output copied to a log file, its lines watched."""

    def __init__(self, name: str, process: trio.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.lines: list[str] = []
        """The lines starting with ``awen`` (the command line's own: ``awen: up``, ``awen sim: ...``)."""
        self.tail: list[str] = []
        self._changed = trio.Event()
        self.ended = False
        self.pump_scope = trio.CancelScope(shield=True)

    async def pump(self) -> None:
        """Copy the output to the log file and keep the lines that matter; until the process closes it.

        Shielded: the output of a system that is stopping must still be read (and logged), or a full pipe
        would stop it in its tracks. `open_child` ends it once the process is gone.
        """
        with self.pump_scope:
            async with await trio.open_file(self.log, "wb") as out:
                await self._copy(out)
        self.ended = True
        self._changed.set()

    async def _copy(self, out: Any) -> None:
        assert self.process.stdout is not None
        pending = b""
        while True:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                return
            await out.write(chunk)
            await out.flush()
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").rstrip("\r")
                self.tail = [*self.tail[-39:], line]
                if line.startswith("awen"):
                    self.lines.append(line)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_ended(self) -> None:
        while not self.ended:
            await self._changed.wait()

    async def wait_line(self, prefix: str, within: float) -> str:
        """The first line starting with ``prefix``; `CampaignError` if the process ends without one, or is late."""
        seen = 0
        with trio.move_on_after(within):
            while True:
                for line in self.lines[seen:]:
                    if line.startswith(prefix):
                        return line
                seen = len(self.lines)
                if self.ended:
                    break
                await self._changed.wait()
        how = "ended" if self.ended else f"did not print it within {within:g} s"
        raise CampaignError(
            f"{self.name} {how}: no line starting {prefix!r}; its last lines:\n" + "\n".join(self.tail[-20:])
        )

    async def stop(self, grace: float) -> None:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL: shielded, so that Ctrl-C cannot skip it."""
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.terminate()
                with trio.move_on_after(grace):
                    await self.process.wait()
            if self.process.returncode is None:
                print(f"kill9: {self.name} did not stop within {grace:g} s of SIGTERM: SIGKILL", file=sys.stderr)
                self.process.kill()
                with trio.move_on_after(10):
                    await self.process.wait()


class CampaignError(Exception):
    """The campaign could not be carried out (as opposed to what it measures)."""


@asynccontextmanager
async def open_child(name: str, command: Sequence[str], log: Path) -> AsyncIterator[Child]:
    process = await trio.lowlevel.open_process(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
    )
    child = Child(name, process, log)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.pump)
            try:
                yield child
            finally:
                await child.stop(STOP_GRACE_S if name == "awen up" else 15.0)
                with trio.CancelScope(shield=True), trio.move_on_after(5):  # the last lines, up to the pipe's end
                    await child.wait_ended()
                child.pump_scope.cancel()
    finally:
        if process.returncode is None:  # only if even the shielded stop was torn away
            process.kill()


def device_toml(modes: int, shot_rate_hz: float) -> str:
    return f"modes = {modes}\nshot_rate_hz = {shot_rate_hz!r}\n"


def campaign_system(data_dir: Path, run_dir: Path, port: int, factory: Path, log_level: str) -> SystemConfig:
    """The standard five actors (`actors.lab.lab_system`) on a separate simulator.

    An actor is crash-looping only past 1000 crashes in a row (by default 5, after which the HAL makes
    the chip safe and every running job waits), and waits at most 1 s before a restart: the campaign
    measures whether jobs survive deaths, not the supervisor's policy for an actor that keeps dying.
    Heartbeats are 1 s apart and a peer is lost after 10 missed ones, so that a process starved of
    CPU on a loaded machine is not taken for a hung one. The calibration does not measure the
    sources (1.6 million shots, half a minute at a slow campaign's shot rate): the campaign's jobs
    count shots, they do not read the sources.
    """
    return lab_system(
        config={"calibration": {"source_shots": 0}},
        data_dir=data_dir,
        device_url=f"tcp://127.0.0.1:{port}",
        factory_calibration=factory,
        log_level=log_level,
        run_dir=run_dir,
        runtime=RuntimeOptions(heartbeat_interval=1.0, liveness=10, request_timeout=60.0),
        restart=RestartPolicy(max_restarts=1000, window=60, backoff=0.1, backoff_max=1.0),
    )


def _phases(circuit: Circuit) -> int:
    """Phases (rounds) of one of the campaign's circuits: each runs all its shots."""
    return sum(1 for op in circuit.ops if op.get("op") == "measure")


def _is_child_of(pid: int, parent: int) -> bool:
    """Whether ``pid`` is a child of ``parent`` (Linux; elsewhere assumed, for want of a way to ask)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()
    return int(stat.rpartition(")")[2].split()[1]) == parent


# --- the campaign ----------------------------------------------------------------------------------


@dataclass
class Kill:
    n: int
    actor: str
    at_s: float
    pid: int
    at_once: bool
    job: str | None
    """The job the executor last said it started and had not ended, when the kill was sent."""
    work: float
    """The fraction of the campaign's shots done when the kill was sent."""
    new_pid: int | None = None
    back_s: float | None = None


@dataclass
class Submission:
    spec: JobSpec
    accepted: bool = False
    created: bool | None = None
    attempts: int = 0
    refused: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    job: str
    kind: str
    shots: int
    state: str
    reason: str = ""
    counted: dict[str, int] = field(default_factory=dict)
    """Shots counted per register slot (``pPHASE.REGISTER``), summed over every frame."""
    frames: int = 0
    duplicate_frames: int = 0
    exact: bool = False
    over: bool = False
    """A slot counted more shots than were asked: some were counted twice."""


class Campaign:
    def __init__(self, options: Options, workdir: Path, say: Callable[[str], None]) -> None:
        self.options = options
        self.workdir = workdir
        self.say = say
        self.run_token = f"{int(time.time() * 1000) % 10**10:010d}"
        self.specs = make_jobs(options, self.run_token)
        self.submissions = {s.job: Submission(s) for s in self.specs}
        self.schedule = kill_schedule(options)
        self.kills: list[Kill] = []
        self.problems: list[str] = []
        self.states: dict[str, str] = {}
        self.running: str | None = None
        self.events: Counter[str] = Counter()
        self.alarms: list[str] = []
        self.started_at = 0.0
        self.calibration: dict[str, Any] = {}
        self.submitted_all = False
        self.supervisor_exit: int | None = None
        self.client: Actor | None = None
        self.supervisor_pid = 0
        self.chip: dict[str, Any] = {}
        self.kills_skipped = ""
        self.work = {s.job: s.circuit.shots * _phases(s.circuit) for s in self.specs}
        self.total_work = sum(self.work.values())
        self.done = dict.fromkeys(self.work, 0)
        self.progressed = trio.lowlevel.ParkingLot()

    def now(self) -> float:
        return trio.current_time() - self.started_at

    # --- requests that live through restarts ---------------------------------------------------

    async def ask(self, to: str, body: Request[R], *, within: float = ASK_S, keep_trying: float = RETRY_S) -> R:
        """A request, repeated while it fails in ways a restart explains; `RemoteError` of a real refusal."""
        assert self.client is not None
        deadline = trio.current_time() + keep_trying
        while True:
            try:
                with trio.fail_after(within):
                    return await self.client.request(to, body)
            except RemoteError as exc:
                if exc.code not in TRANSIENT:
                    raise
                error: Exception = exc
            except (AwenError, trio.TooSlowError) as exc:
                error = exc
            if trio.current_time() > deadline:
                raise CampaignError(f"{to} did not answer {body.TYPE} within {keep_trying:g} s: {error}") from error
            await trio.sleep(0.2)

    # --- start ------------------------------------------------------------------------------------

    async def calibrate(self) -> None:
        status = await self.ask("calibration", GetCalibrationStatus(), keep_trying=60)
        began = trio.current_time()
        if not status.valid:
            self.say("kill9: no valid calibration: calibrating (heater sweeps through the queue)")
            cal = await self.ask("calibration", Calibrate(), within=1800, keep_trying=1800)
            status = await self.ask("calibration", GetCalibrationStatus(), keep_trying=60)
            self.calibration = {"version": cal.version, "seconds": trio.current_time() - began, "new": True}
            self.say(f"kill9: calibration version {cal.version} in {self.calibration['seconds']:.1f} s")
        else:
            self.calibration = {"version": status.version, "seconds": 0.0, "new": False}
        if not status.valid:
            raise CampaignError(f"the calibration is not valid after calibrating: {status.last_error}")

    # --- the three activities ---------------------------------------------------------------------

    async def submit_all(self, first_accepted: trio.Event, accepted: trio.MemorySendChannel[str]) -> None:
        """Submit every job in turn; each one accepted goes to `follow_jobs`."""
        rng = random.Random(self.options.seed * 7919 + 3)
        async with accepted:
            for i, spec in enumerate(self.specs):
                if i:
                    await trio.sleep(rng.uniform(0, self.options.submit_gap))
                await self.submit(self.submissions[spec.job])
                if self.submissions[spec.job].accepted:
                    first_accepted.set()
                    await accepted.send(spec.job)
            self.submitted_all = True
            first_accepted.set()

    async def submit(self, sub: Submission) -> None:
        """Submit until accepted; a repetition after a lost reply names the same job, so it is one job."""
        assert self.client is not None
        deadline = trio.current_time() + RETRY_S
        while True:
            sub.attempts += 1
            try:
                with trio.fail_after(ASK_S):
                    accepted = await self.client.request(
                        "scheduler", Submit(circuit=sub.spec.circuit, job=sub.spec.job)
                    )
            except RemoteError as exc:
                if exc.code in REFUSED:
                    sub.refused = f"[{exc.code}] {exc.remote_message}"
                    return
                sub.errors.append(f"[{exc.code}] {exc.remote_message}"[:200])
            except (AwenError, trio.TooSlowError) as exc:
                sub.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                sub.accepted, sub.created = True, accepted.created
                return
            if trio.current_time() > deadline:
                sub.refused = f"no accepted reply within {RETRY_S:g} s: {sub.errors[-1]}"
                return
            await trio.sleep(0.2)

    def accepted(self) -> list[str]:
        return [job for job, sub in self.submissions.items() if sub.accepted]

    def all_ended(self) -> bool:
        return self.submitted_all and all(self.states.get(job) in ENDED for job in self.accepted())

    async def follow_jobs(self, accepted: trio.MemoryReceiveChannel[str]) -> None:
        """Every accepted job until it has ended: each waited for on the memory actor's events."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.say_while_waiting)
            async with trio.open_nursery() as waiting:
                async for job in accepted:
                    waiting.start_soon(self.follow_job, job)
            nursery.cancel_scope.cancel()

    async def follow_job(self, job: str) -> None:
        """Until the store holds ``job`` ended (through any restart of the memory actor: `wait_for_job`)."""
        assert self.client is not None
        while True:
            try:
                record = await wait_for_job(self.client, job)
                break
            except RemoteError as exc:
                if exc.code not in TRANSIENT:
                    self.problems.append(f"{job}: the store cannot say how it ended: [{exc.code}] {exc.remote_message}")
                    return
            await trio.sleep(0.2)
        self.states[job] = record.state
        self.progressed.unpark_all()

    async def say_while_waiting(self) -> None:
        """A campaign that stalls says so while it waits: every 30 s, the accepted jobs' states."""
        since = time.time() - 60
        while True:
            await trio.sleep(30)
            try:
                with trio.fail_after(ASK_S):
                    assert self.client is not None
                    jobs = (await self.client.request("memory", QueryJobs(since=since, limit=100_000))).jobs
            except (AwenError, trio.TooSlowError):
                continue
            now = {record.job: record.state for record in jobs}
            states = Counter(now.get(job, "unknown") for job in self.accepted())
            self.say(f"kill9: waiting at {self.now():.0f} s: " + ", ".join(f"{s} {n}" for s, n in states.items()))

    def follow_events(self, client: Actor) -> None:
        """The executor's account of which job runs and how far, the supervisor's of restarts and give-ups."""

        def on_event(body: Any, env: Envelope) -> None:
            kind = env.type
            if kind != "exec.progress":
                self.events[kind] += 1
            if kind == "exec.job_started":
                self.running = body.job
            elif kind == "exec.job_ended" and body.job == self.running:
                self.running = None
            elif kind == "exec.progress" and body.job in self.done:
                self.done[body.job] = max(self.done[body.job], body.shots_done)
                self.progressed.unpark_all()
            elif kind == "actor.gave_up":
                self.alarms.append(f"gave up on {body.actor}: {body.reason}")
            elif kind == "actor.crash_looping" and self.events[kind] == 1:  # published with every further try
                self.alarms.append(f"{body.actor} is crash-looping")

        for prefix in ("exec.job_started", "exec.job_ended", "exec.progress", "actor."):
            client.subscribe(prefix, on_event)

    def work_done(self) -> float:
        """The fraction of the campaign's shots done, as far as the executor's progress and the store tell."""
        for job, state in self.states.items():
            if state in ENDED:
                self.done[job] = self.work[job]
        return sum(self.done.values()) / self.total_work

    async def pid_of(self, actor: str) -> int:
        status = await self.ask(actor, GetStatus(), within=5)
        pid: int = status.pid
        return pid

    async def wait_back(self, kill: Kill) -> None:
        """Until the killed actor answers ``sys.ping`` from a new process."""
        assert self.client is not None
        deadline = trio.current_time() + BACK_S
        while trio.current_time() < deadline:
            try:
                with trio.fail_after(2):
                    pong = await self.client.request(kill.actor, Ping())
            except (AwenError, trio.TooSlowError):
                await trio.sleep(0.1)
                continue
            if pong.pid != kill.pid:
                kill.new_pid, kill.back_s = pong.pid, self.now() - kill.at_s
                self.say(f"kill9:   {kill.actor} is back as pid {pong.pid} after {kill.back_s:.1f} s")
                return
            await trio.sleep(0.1)
        self.problems.append(f"kill {kill.n}: {kill.actor} did not answer from a new process within {BACK_S:g} s")

    async def kill_all(self, first_accepted: trio.Event) -> None:
        await first_accepted.wait()
        pending: list[Kill] = []
        for n, planned in enumerate(self.schedule, start=1):
            if not planned.at_once:
                for kill in pending:
                    if kill.back_s is None:
                        await self.wait_back(kill)
                pending = []
                while self.work_done() < planned.at_work and not self.all_ended():
                    await self.progressed.park()
            await trio.sleep(planned.delay_s)
            if self.all_ended():
                self.kills_skipped = f"{len(self.schedule) - n + 1} kills not made: every accepted job had ended"
                self.say(f"kill9: {self.kills_skipped}")
                break
            pid = await self.pid_of(planned.actor)
            for earlier in pending:  # killed a moment ago, and already back: this is its new process
                if earlier.actor == planned.actor and earlier.back_s is None and pid != earlier.pid:
                    earlier.new_pid, earlier.back_s = pid, self.now() - earlier.at_s
            if pid == self.supervisor_pid or not _is_child_of(pid, self.supervisor_pid):
                raise CampaignError(f"{planned.actor} answered with pid {pid}, not a child of awen up: not killing it")
            kill = Kill(
                n=n,
                actor=planned.actor,
                at_s=self.now(),
                pid=pid,
                at_once=planned.at_once,
                job=self.running,
                work=self.work_done(),
            )
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it died on its own a moment ago: the supervisor is at it already
                self.problems.append(f"kill {n}: {planned.actor} (pid {pid}) had already exited")
            self.kills.append(kill)
            pending.append(kill)
            self.say(
                f"kill9: kill {n}/{len(self.schedule)} at {kill.at_s:.1f} s, {kill.work:.0%} of the shots done: "
                f"{planned.actor} (pid {pid})"
                + (" right after the previous one" if planned.at_once else "")
                + (f", job {kill.job} running" if kill.job else ", no job running")
            )
        for kill in pending:
            if kill.back_s is None:
                await self.wait_back(kill)

    async def watch_supervisor(self, up: Child, stop: trio.CancelScope) -> None:
        self.supervisor_exit = await up.process.wait()
        self.problems.append(
            f"awen up exited with status {self.supervisor_exit} during the campaign; its last lines:\n"
            + "\n".join(up.tail[-15:])
        )
        stop.cancel()

    # --- the verdict ------------------------------------------------------------------------------

    async def outcome(self, spec: JobSpec, description: Any) -> Outcome | None:
        """What the store says of one job; None if it does not know the job (lost)."""
        shots = spec.circuit.shots
        try:
            record: JobRecord = (await self.ask("memory", GetJob(job=spec.job))).record
        except RemoteError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise
        out = Outcome(job=spec.job, kind=spec.kind, shots=shots, state=record.state, reason=record.reason)
        plan: Plan | None = None
        if record.plan is not None:
            plan = (await self.ask("memory", GetPlan(plan=str(record.plan)))).body
        if plan is None:
            plan = compile_circuit(spec.circuit, description)
        expected = [result_slot(phase.index, reg.name) for phase in plan.phases for reg in phase.registers]
        results = (await self.ask("memory", QueryResults(job=spec.job), within=60)).results
        totals: dict[str, int] = dict.fromkeys(expected, 0)
        frames: Counter[tuple[str, int]] = Counter()
        for result in results:
            if parse_result_slot(result.slot) is None:  # the cycle of a cyclic job, if any
                continue
            totals[result.slot] = totals.get(result.slot, 0) + int(np.asarray(result.value).sum())
            frames[(result.slot, result.frame)] += 1
        out.counted = totals
        out.frames = len({frame for _, frame in frames})
        out.duplicate_frames = sum(n - 1 for n in frames.values())
        out.exact = all(total == shots for total in totals.values()) and bool(totals)
        out.over = any(total > shots for total in totals.values())
        return out

    async def verdict(self) -> tuple[list[Outcome], list[str], list[str]]:
        description = sim.load_config(self.workdir / "chip.toml").description()
        outcomes, lost, unread = [], [], []
        for job in self.accepted():
            try:
                out = await self.outcome(self.submissions[job].spec, description)
            except (CampaignError, AwenError) as exc:
                unread.append(f"{job}: {exc}")
                continue
            if out is None:
                lost.append(job)
            else:
                outcomes.append(out)
        return outcomes, lost, unread

    def read_record(self, record: Path) -> None:
        entries = sim.read_record(record)
        kinds = Counter(entry.event for entry in entries)
        self.chip = {
            "record_lines": len(entries),
            "over_the_limits": len(sim.record_violations(entries)),
            "watchdog_expiries": kinds.get("watchdog", 0),
            "interlocks": kinds.get("interlock", 0),
            "shot_runs": kinds.get("shots", 0),
        }

    # --- all of it --------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        options, workdir = self.options, self.workdir
        wall_began = time.monotonic()
        data_dir, run_dir = workdir / "data", workdir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        (workdir / "chip.toml").write_text(device_toml(options.modes, options.shot_rate_hz))
        try:
            chip = sim.load_config(workdir / "chip.toml")
        except sim.SimConfigError as exc:
            raise CampaignError(f"the simulated chip: {exc}") from exc
        factory = prepare(data_dir, chip, options.seed)
        record = workdir / "chip.jsonl"
        record.unlink(missing_ok=True)  # a kept directory keeps its store (and calibration), not the last audit
        python = [sys.executable, "-m", "awen.cli"]
        simulator = [
            *python,
            *("sim", "serve", "--tcp", "127.0.0.1:0", "--seed", str(options.seed)),
            *("--device", str(workdir / "chip.toml"), "--record", str(record), "--log-level", "info"),
        ]
        outcomes: list[Outcome] = []
        lost: list[str] = []
        unread: list[str] = []
        jobs_s = 0.0
        async with open_child("the simulator", simulator, workdir / "sim.log") as sim_child:
            port = int((await sim_child.wait_line("awen sim:", 60)).rsplit(":", 1)[1])
            system_config = campaign_system(data_dir, run_dir, port, factory, options.log_level)
            (workdir / "system.toml").write_text(system_toml(system_config))
            async with open_child("awen up", [*python, "up", str(workdir / "system.toml")], workdir / "awen.log") as up:
                self.supervisor_pid = up.process.pid
                self.say(
                    f"kill9: simulator pid {sim_child.process.pid} on 127.0.0.1:{port}, awen up pid "
                    f"{up.process.pid}; logs in {workdir}"
                )
                system_file = Path((await up.wait_line("awen: up", 300)).rsplit(" ", 1)[1])
                system = ResolvedSystem.load(system_file)
                self.client = Actor("kill9", system.runtime_for())
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.client.run)
                    campaign = trio.CancelScope()
                    nursery.start_soon(self.watch_supervisor, up, campaign)
                    self.follow_events(self.client)
                    with campaign:
                        await self.calibrate()
                        self.started_at = trio.current_time()
                        jobs_began = trio.current_time()
                        first_accepted = trio.Event()
                        to_follow, accepted = trio.open_memory_channel[str](len(self.specs))
                        with trio.move_on_after(options.timeout) as waiting:
                            async with trio.open_nursery() as work:
                                work.start_soon(self.submit_all, first_accepted, to_follow)
                                work.start_soon(self.kill_all, first_accepted)
                                work.start_soon(self.follow_jobs, accepted)
                        if waiting.cancelled_caught:
                            self.problems.append(
                                f"not every accepted job had ended {options.timeout:g} s after the first submission"
                            )
                        jobs_s = trio.current_time() - jobs_began
                        outcomes, lost, unread = await self.verdict()
                    nursery.cancel_scope.cancel()
        if record.exists():
            await trio.to_thread.run_sync(self.read_record, record)
        return self.report(outcomes, lost, unread, wall_s=time.monotonic() - wall_began, jobs_s=jobs_s)

    def report(
        self, outcomes: list[Outcome], lost: list[str], unread: list[str], *, wall_s: float, jobs_s: float
    ) -> dict[str, Any]:
        options = self.options
        states = Counter(o.state for o in outcomes)
        reasons: dict[str, Counter[str]] = {state: Counter() for state in ("failed", "cancelled")}
        for o in outcomes:
            if o.state in reasons:
                reasons[o.state][o.reason] += 1
        not_ended = [o for o in outcomes if o.state not in ENDED]
        miscounted = [o for o in outcomes if (o.state == "completed" and not o.exact) or o.over]
        completed_exact = [o for o in outcomes if o.state == "completed" and o.exact]
        accepted = self.accepted()
        not_accepted = {
            job: sub.refused or "not submitted" for job, sub in self.submissions.items() if not sub.accepted
        }
        ok = bool(accepted) and len(completed_exact) == len(accepted) and not lost and not miscounted and not unread
        return {
            "ok": ok,
            "seed": options.seed,
            "options": {
                "jobs": options.jobs,
                "kills": options.kills,
                "actors": list(options.actors),
                "shots": [options.shots_min, options.shots_max],
                "modes": options.modes,
                "burst": options.burst,
                "timeout_s": options.timeout,
            },
            "wall_s": round(wall_s, 1),
            "jobs_s": round(jobs_s, 1),
            "calibration": self.calibration,
            "kills": {
                "made": len(self.kills),
                "per_actor": dict(Counter(k.actor for k in self.kills)),
                "skipped": self.kills_skipped,
                "list": [asdict(k) for k in self.kills],
            },
            "jobs": {
                "submitted": len(self.submissions),
                "accepted": len(accepted),
                "not_accepted": len(not_accepted),
                "repeated_submissions": sum(1 for s in self.submissions.values() if s.attempts > 1),
                "completed": states.get("completed", 0),
                "completed_exact": len(completed_exact),
                "failed": states.get("failed", 0),
                "cancelled": states.get("cancelled", 0),
                "not_ended": len(not_ended),
                "lost": len(lost),
                "miscounted": len(miscounted),
                "double_counted": sum(1 for o in outcomes if o.over),
                "unread": len(unread),
            },
            "failed_reasons": dict(reasons["failed"].most_common()),
            "cancelled_reasons": dict(reasons["cancelled"].most_common()),
            "not_ended_states": dict(Counter(o.state for o in not_ended)),
            "not_accepted_jobs": not_accepted,
            "repeated_submissions": [
                {"job": job, "attempts": sub.attempts, "created": sub.created, "errors": sub.errors}
                for job, sub in self.submissions.items()
                if sub.attempts > 1
            ],
            "lost_jobs": lost,
            "miscounted_jobs": [
                {"job": o.job, "state": o.state, "asked": o.shots, "counted": o.counted} for o in miscounted
            ],
            "unread_jobs": unread,
            "per_job": [asdict(o) for o in outcomes],
            "events": dict(self.events),
            "supervisor_alarms": self.alarms,
            "chip": self.chip,
            "problems": self.problems,
            "workdir": str(self.workdir) if options.keep is not None else None,
        }


async def run_campaign(options: Options, *, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one campaign and return its report (see `print_report`).

    Raises:
        CampaignError: it could not be carried out (the stack did not come up, no calibration, an actor
            answered with a pid that is not one of the supervisor's children...).
    """
    speak = say or (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        if options.keep is not None:
            options.keep.mkdir(parents=True, exist_ok=True)
            return await Campaign(options, options.keep.resolve(), speak).run()
        with tempfile.TemporaryDirectory(prefix="awen-kill9-") as tmp:
            return await Campaign(options, Path(tmp), speak).run()
    except BaseExceptionGroup as group:  # one failure inside nurseries: say it as itself
        plain = _plain(group)
        if plain is group:
            raise
        raise plain from None


def _plain(exc: BaseException) -> BaseException:
    """The one exception inside nested exception groups, or the outer group if there are several."""
    inner = exc
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return exc if isinstance(inner, BaseExceptionGroup) else inner


# --- the report ------------------------------------------------------------------------------------


def print_report(report: dict[str, Any], out: TextIO) -> None:
    """The campaign as people read it: what was done, each kill, each job's fate, the chip, the verdict."""
    o, jobs = report["options"], report["jobs"]

    def line(text: str = "") -> None:
        print(text, file=out)

    line(
        f"kill -9 campaign, seed {report['seed']}: {o['jobs']} jobs of {o['shots'][0]}-{o['shots'][1]} shots, "
        f"{o['kills']} kills of {', '.join(o['actors'])}; {o['modes']}-mode simulated chip"
    )
    cal = report["calibration"]
    line(
        f"wall time {report['wall_s']:.1f} s (jobs and kills {report['jobs_s']:.1f} s"
        + (f", calibration {cal['seconds']:.1f} s" if cal.get("new") else "")
        + ")"
    )
    _print_kills(report, line)
    _print_jobs(report, line)
    chip = report["chip"]
    if chip:
        line()
        line(
            f"chip: {chip['shot_runs']} shot runs, {chip['record_lines']} audit lines, {chip['over_the_limits']} over "
            f"the limits, {chip['watchdog_expiries']} watchdog expiries, {chip['interlocks']} interlock trips"
        )
    if report["supervisor_alarms"]:
        line(f"supervisor: {'; '.join(report['gave_up'])}")
    for problem in report["problems"]:
        line(f"problem: {problem}")
    if report["workdir"]:
        line(f"kept: {report['workdir']} (data/, awen.log, sim.log, chip.jsonl, system.toml)")
    line()
    if report["ok"]:
        line(f"verdict: PASS: all {jobs['accepted']} accepted jobs completed with exact counts, none lost")
    else:
        bad = [
            f"{jobs[key]} {label}"
            for key, label in (
                ("failed", "failed"),
                ("cancelled", "cancelled"),
                ("not_ended", "not ended"),
                ("lost", "lost"),
                ("miscounted", "miscounted"),
                ("unread", "unread"),
            )
            if jobs[key]
        ]
        line(f"verdict: FAIL: {', '.join(bad) or 'no job accepted'} of {jobs['accepted']} accepted")


def _print_kills(report: dict[str, Any], line: Callable[..., None]) -> None:
    """Each kill: when, which process, how long until it was back, which job was running."""
    kills = report["kills"]
    line()
    per_actor = ", ".join(f"{a} {n}" for a, n in sorted(kills["per_actor"].items(), key=lambda x: -x[1])) or "none"
    line(f"kills: {kills['made']} made ({per_actor})" + (f"; {kills['skipped']}" if kills["skipped"] else ""))
    if kills["list"]:
        line(f"  {'#':>3} {'at s':>6}  {'actor':<12} {'pid':>7} -> {'new':<7} {'back in':>8}  job running")
        for k in kills["list"]:
            back = f"{k['back_s']:.1f} s" if k["back_s"] is not None else "never"
            line(
                f"  {k['n']:>3} {k['at_s']:>6.1f}  {k['actor']:<12} {k['pid']:>7} -> {k['new_pid'] or '-':<7} "
                f"{back:>8}  {k['job'] or '-'}{'  (right after the previous kill)' if k['at_once'] else ''}"
            )


def _print_jobs(report: dict[str, Any], line: Callable[..., None]) -> None:
    """Each accepted job's fate: completed (exactly?), failed, cancelled, not ended, lost, miscounted."""
    jobs = report["jobs"]
    line()
    line(
        f"jobs: {jobs['accepted']} accepted of {jobs['submitted']} submitted"
        + (f" ({jobs['repeated_submissions']} submitted more than once)" if jobs["repeated_submissions"] else "")
    )
    for r in report["repeated_submissions"]:
        known = {True: "a new job", False: "the job an earlier attempt had stored", None: "never accepted"}
        line(f"    {r['job']}: {r['attempts']} attempts, accepted as {known[r['created']]}; first: {r['errors'][0]}")
    line(f"  completed    {jobs['completed']:>4}  ({jobs['completed_exact']} with exact counts)")
    line(f"  failed       {jobs['failed']:>4}")
    for reason, n in report["failed_reasons"].items():
        line(f"    {n:>4}  {reason or '(no reason)'}")
    line(f"  cancelled    {jobs['cancelled']:>4}")
    for reason, n in report["cancelled_reasons"].items():
        line(f"    {n:>4}  {reason or '(no reason)'}")
    states = ", ".join(f"{s} {n}" for s, n in report["not_ended_states"].items())
    line(f"  not ended    {jobs['not_ended']:>4}" + (f"  ({states})" if states else ""))
    line(f"  lost         {jobs['lost']:>4}" + (f"  {', '.join(report['lost_jobs'])}" if report["lost_jobs"] else ""))
    line(
        f"  miscounted   {jobs['miscounted']:>4}"
        + (f"  ({jobs['double_counted']} over)" if jobs["double_counted"] else "")
    )
    for m in report["miscounted_jobs"]:
        counted = ", ".join(f"{slot} {n}" for slot, n in m["counted"].items()) or "nothing"
        line(f"    {m['job']} {m['state']}: asked {m['asked']} per phase, counted {counted}")
    if jobs["not_accepted"]:
        line(f"  not accepted {jobs['not_accepted']:>4}")
        for job, why in report["not_accepted_jobs"].items():
            line(f"    {job}: {why}")
    if jobs["unread"]:
        line(f"  unread       {jobs['unread']:>4}  (the store did not answer)")
        for text in report["unread_jobs"]:
            line(f"    {text}")


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, bool, bool]:
    """The options, whether to print JSON, whether to keep quiet on stderr."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20, help="jobs to submit (default 20)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs to send (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the jobs, the kills and the simulated chip")
    parser.add_argument(
        "--actors", default=",".join(ACTORS), help=f"which actors may be killed (default {','.join(ACTORS)})"
    )
    parser.add_argument("--shots-min", type=int, default=20_000)
    parser.add_argument("--shots-max", type=int, default=200_000)
    parser.add_argument("--modes", type=int, default=4, help="modes of the simulated chip (default 4)")
    parser.add_argument("--shot-rate", type=float, default=1e6, help="the chip's shots per second (default 1e6)")
    parser.add_argument("--burst", type=float, default=0.2, help="chance that a kill follows the previous at once")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for every accepted job to end")
    parser.add_argument("--keep", type=Path, help="keep the data, logs and audit record here (default: a temp dir)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    actors = tuple(a.strip() for a in args.actors.split(",") if a.strip())
    unknown = sorted(set(actors) - set(ACTORS))
    if unknown or not actors:
        parser.error(f"--actors: {', '.join(unknown) or 'none given'}; choose from {', '.join(ACTORS)}")
    if not 0 < args.shots_min <= args.shots_max:
        parser.error("--shots-min must be positive and at most --shots-max")
    if args.jobs < 1 or args.kills < 0 or not 0 <= args.burst <= 1:
        parser.error("--jobs >= 1, --kills >= 0, 0 <= --burst <= 1")
    if not args.shot_rate > 0:
        parser.error("--shot-rate must be positive")
    if args.modes < 4:
        parser.error("--modes: at least 4 (the campaign's circuits use 4 modes)")
    options = Options(
        jobs=args.jobs,
        kills=args.kills,
        seed=args.seed,
        actors=actors,
        shots_min=args.shots_min,
        shots_max=args.shots_max,
        modes=args.modes,
        shot_rate_hz=args.shot_rate,
        burst=args.burst,
        timeout=args.timeout,
        keep=args.keep,
        log_level=args.log_level,
    )
    return options, args.json, args.quiet


async def _stoppable(options: Options, say: Callable[[str], None] | None) -> tuple[dict[str, Any] | None, int]:
    """The campaign's report; or None and the signal, if SIGTERM or SIGHUP stopped it (SIGINT is Ctrl-C)."""
    report: dict[str, Any] | None = None
    received = 0
    async with trio.open_nursery() as nursery:

        async def stop_on_signals() -> None:
            nonlocal received
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    received = signum
                    nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signals)
        report = await run_campaign(options, say=say)
        nursery.cancel_scope.cancel()
    return report, received


def main(argv: Sequence[str] | None = None) -> int:
    options, as_json, quiet = parse_args(argv)
    say: Callable[[str], None] | None = (lambda _text: None) if quiet else None
    logging.getLogger("awen").setLevel(logging.ERROR)  # the client's own view of peers coming and going
    try:
        try:
            report, signum = trio.run(lambda: _stoppable(options, say))
        except BaseExceptionGroup as group:
            raise _plain(group) from None
    except CampaignError as exc:
        print(f"kill9: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kill9: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    if report is None:
        print(f"kill9: stopped by {signal.Signals(signum).name}; every process it started is stopped", file=sys.stderr)
        return 128 + signum
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report, sys.stdout)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
