"""A raw client, written from docs/protocol.md alone, sends thousands of hostile frames to a running system.

(The machine is shared: heartbeats are 1 s apart and a peer is lost after 10 missed ones, so that an actor
starved of CPU by other processes is not taken for one that hangs; a frame that blocks an actor for 10 s
still is.)

The whole stack runs as ``awen run`` starts it (memory, HAL with a simulated
chip, scheduler, executor, calibration, each its own process, under ``awen
up``). A plain pyzmq DEALER per actor, the supervisor included, sends frames
that crashed actors before (deep nesting, unknown dtypes, impossible shapes,
4 MB names) and, to each domain actor, valid envelopes of every message type
whose bodies hold extreme values in every field (tests/extremes.py, derived
from the catalog). Then:

- every actor and the supervisor is alive, the same process (pid and
  incarnation unchanged), and answers ``sys.ping``;
- every request got exactly one reply, an error with the documented code for
  the frames whose code is known, and never ``handler-failed`` (no input a
  client chooses may reach a handler's bug); notices, replies and events got
  none;
- the log stayed bounded: no line longer than `MAX_LOG_RECORD`, and a few MB
  in all.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from actors.lab import lab_system, system_toml
from protocol import Codec, ErrorCode, Notice, ProtocolError, Request
from protocol.catalog import CATALOG
from protocol.system import Pong
from runtime import ResolvedSystem, RuntimeOptions, SystemConfig
from runtime._logging import MAX_LOG_RECORD

from .extremes import extreme_bodies, pack
from .helpers import REPO
from .test_hostile_actor import HOSTILE

pytestmark = [pytest.mark.system, pytest.mark.timeout(1500)]

codec = Codec(CATALOG)

DOMAIN = {"hal.": "hal", "mem.": "memory", "sched.": "scheduler", "exec.": "executor", "cal.": "calibration"}
LONG_RUNNING = {"cal.calibrate", "cal.check_reference"}
"""Requests that, when valid, run a whole calibration or drift check through the queue: sent only with
bodies the schema refuses, so that the test does not wait minutes for their answers."""


JOB = "hostile-job"
WINDOW = 48
"""Requests in flight per actor."""
REPLY_WAIT_S = 300.0


def hostile_system(data_dir: Path, run_dir: Path, factory: Path) -> SystemConfig:
    """The standard lab on a simulated chip, as ``awen run`` starts it; frames up to 8 MiB."""
    return lab_system(
        data_dir=data_dir,
        device_url="sim://?seed=1&modes=4",
        factory_calibration=factory,
        run_dir=run_dir,
        runtime=RuntimeOptions(heartbeat_interval=1.0, liveness=10, request_timeout=60.0, max_frame_bytes=8388608),
    )


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    system: ResolvedSystem
    log: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    from awen.run import prepare
    from sim import parse_config

    tmp = tmp_path_factory.mktemp("hostile")
    data_dir, run_dir = tmp / "data", tmp / "run"
    factory = prepare(data_dir, parse_config({"modes": 4}), 1)
    config = tmp / "system.toml"
    config.write_text(system_toml(hostile_system(data_dir, run_dir, factory)))
    log = tmp / "awen.log"
    command = [sys.executable, "-m", "awen.cli", "up", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    up = threading.Event()

    def tee() -> None:
        """Every line into the log file as it comes (the test measures it); says when the system is up."""
        assert process.stdout is not None
        with log.open("wb") as out:
            for line in process.stdout:
                out.write(line)
                out.flush()
                if line.startswith(b"awen: up"):
                    up.set()
        up.set()  # the process ended: whoever waits looks at why

    copier = threading.Thread(target=tee, daemon=True)
    copier.start()
    try:
        assert up.wait(timeout=180), log.read_text()[-3000:]
        assert process.poll() is None, log.read_text()[-3000:]
        yield Running(process, ResolvedSystem.load(run_dir / "system.json"), log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        copier.join(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


# --- the raw client -----------------------------------------------------------------------------


@dataclass
class Sent:
    """One frame and what must come back for it."""

    frame: bytes
    id: int
    what: str
    answered: bool  # a reply must come back (a request, or a frame whose type no one can know)
    code: str | None = None  # the code it must carry, when known


@dataclass
class Outcome:
    replies: dict[int, list[Any]] = field(default_factory=dict)
    anonymous: list[Any] = field(default_factory=list)
    undecodable: list[bytes] = field(default_factory=list)


_ids = iter(range(10**9, 2 * 10**9))


def envelope(msg_type: str, body: Any, to: str, **header: Any) -> tuple[int, bytes]:
    msg_id = next(_ids)
    env = {"v": 1, "id": msg_id, "type": msg_type, "from": "hostile", "to": to, "re": None, "ts": time.time()}
    env.update(header)
    env["body"] = body
    return msg_id, msgpack.packb(env, use_bin_type=True)


def exchange(address: str, frames: list[Sent]) -> Outcome:
    """Send every frame to one actor, at most `WINDOW` requests in flight; collect every reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(address)
    outcome = Outcome()
    waiting = {s.id for s in frames if s.answered}
    anonymous_expected = sum(1 for s in frames if s.answered and s.code is not None and s.id < 0)
    in_flight = 0

    def take(timeout_ms: int) -> None:
        nonlocal in_flight
        while sock.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            raw = sock.recv()
            try:
                reply = codec.decode(raw)
            except ProtocolError:
                outcome.undecodable.append(raw[:200])
                continue
            if reply.re is None:
                outcome.anonymous.append(reply)
                in_flight -= 1
            else:
                outcome.replies.setdefault(reply.re, []).append(reply)
                if reply.re in waiting:
                    in_flight -= 1

    try:
        for sent in frames:
            while in_flight >= WINDOW:
                take(1000)
            sock.send(sent.frame)
            if sent.answered:
                in_flight += 1
            take(0)
        deadline = time.monotonic() + REPLY_WAIT_S
        while time.monotonic() < deadline:
            missing = [i for i in waiting if i >= 0 and i not in outcome.replies]
            if not missing and len(outcome.anonymous) >= anonymous_expected:
                break
            take(500)
        take(1000)  # anything that should not have come, a moment to arrive
    finally:
        sock.close()
    return outcome


def ping(address: str, to: str) -> Pong:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        msg_id, frame = envelope("sys.ping", {"data": "still there?"}, to)
        sock.send(frame)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sock.poll(1000, zmq.POLLIN):
                reply = codec.decode(sock.recv())
                if reply.re == msg_id:
                    assert isinstance(reply.body, Pong), reply
                    return reply.body
        raise AssertionError(f"{to} did not answer sys.ping within 60 s")
    finally:
        sock.close()


def request(address: str, to: str, msg_type: str, body: Any) -> Any:
    msg_id, frame = envelope(msg_type, body, to)
    outcome = exchange(address, [Sent(frame, msg_id, f"{msg_type} setup", answered=True)])
    (reply,) = outcome.replies[msg_id]
    return reply


# --- the frames ---------------------------------------------------------------------------------


def generic_frames(to: str) -> list[Sent]:
    """The frames that crashed actors before, each with the code it must be answered with."""
    sent: list[Sent] = []
    for what, frame, code in HOSTILE:
        header_readable = what not in ("garbage", "nested-100000-bare")
        # Frames whose header cannot be read are answered to "?" without re: tracked by count (id < 0).
        sent.append(Sent(frame, 7 if header_readable else -len(sent) - 1, what, answered=True, code=code))
    return sent


def overrides(actor: str) -> dict[str, Any]:
    return {"device": "chip" if actor == "hal" else "hostile-chip", "job": JOB, "executor": "hostile-executor"}


def extreme_frames(actor: str, prefixes: tuple[str, ...]) -> list[Sent]:
    sent: list[Sent] = []
    for cls in CATALOG:
        if not cls.TYPE.startswith(prefixes):
            continue
        bodies = list(extreme_bodies(cls, overrides(actor)))
        is_request = issubclass(cls, Request)
        if not is_request:
            bodies = bodies[:: max(1, len(bodies) // 4)]  # replies and events are only decoded and dropped
        for path, body in bodies:
            msg_id, frame = envelope(cls.TYPE, body, actor)
            if cls.TYPE in LONG_RUNNING:
                try:
                    codec.decode(frame)
                except ProtocolError:
                    pass
                else:
                    continue  # valid: it would run for minutes
            sent.append(Sent(frame, msg_id, f"{cls.TYPE} {path or '(baseline)'}", answered=is_request))
    return sent


def frames_for(actor: str) -> list[Sent]:
    sent = generic_frames(actor)
    for s in sent:
        if s.id == 7:  # readable headers: give each its own id
            s.id = next(_ids)
            s.frame = s.frame.replace(b"\xa2id\x07", b"\xa2id\xce" + s.id.to_bytes(4, "big"), 1)
    prefixes: tuple[str, ...] = ("sys.",)
    prefixes += tuple(p for p, a in DOMAIN.items() if a == actor)
    return sent + extreme_frames(actor, prefixes)


# --- the test -----------------------------------------------------------------------------------


def test_thousands_of_hostile_frames_leave_every_actor_serving_with_documented_answers(running: Running):
    directory = running.system.directory
    names = list(directory)
    before = {name: ping(directory[name].address, name) for name in names}
    job = {"job": JOB, "circuit": {"modes": 2, "ops": []}}
    stored = request(directory["memory"].address, "memory", "mem.put_job", job)
    assert stored.type == "mem.job_stored", stored.body
    # Jobs the extremes submit are accepted and planned, but none runs: a continuous one would run until
    # cancelled. (The extremes never name this condition, so nothing they send lifts it.)
    suspended = request(
        directory["scheduler"].address,
        "scheduler",
        "sched.suspend",
        {"condition": "hostile-test", "reason": "a hostile client is at work"},
    )
    assert suspended.type == "sys.ok", suspended.body

    plans = {name: frames_for(name) for name in names}
    assert sum(len(p) for p in plans.values()) > 3000
    outcomes: dict[str, Outcome] = {}

    def run(name: str) -> None:
        outcomes[name] = exchange(directory[name].address, plans[name])

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Every process is the one that was there before, and still answers.
    assert running.process.poll() is None
    after = {name: ping(directory[name].address, name) for name in names}
    assert {n: (p.pid, p.incarnation) for n, p in after.items()} == {
        n: (p.pid, p.incarnation) for n, p in before.items()
    }

    problems: list[str] = []
    codes: Counter[str] = Counter()
    documented = {code.value for code in ErrorCode}
    for name in names:
        outcome = outcomes[name]
        problems += [f"{name}: undecodable reply {raw!r}" for raw in outcome.undecodable]
        anonymous = [s for s in plans[name] if s.id < 0]
        if len(outcome.anonymous) != len(anonymous):
            problems.append(f"{name}: {len(outcome.anonymous)} replies to '?' for {len(anonymous)} unreadable frames")
        problems += [
            f"{name}: {r.body.code} for an unreadable frame, expected one of {sorted({s.code for s in anonymous})}"
            for r in outcome.anonymous
            if r.body.code not in {s.code for s in anonymous}
        ]
        for sent in plans[name]:
            if sent.id < 0:
                continue
            replies = outcome.replies.get(sent.id, [])
            if not sent.answered:
                if replies:
                    problems.append(f"{name}: {sent.what} is not a request, but was answered {replies[0].type}")
                continue
            if len(replies) != 1:
                problems.append(f"{name}: {sent.what} got {len(replies)} replies")
                continue
            reply = replies[0]
            code = reply.body.code if reply.type == "sys.error" else "(reply)"
            codes[code] += 1
            if sent.code is not None and code != sent.code:
                problems.append(f"{name}: {sent.what} answered {code}, expected {sent.code}: {reply.body.message}")
            elif code == ErrorCode.HANDLER_FAILED:
                problems.append(f"{name}: {sent.what} reached a handler's bug: {reply.body.message[:300]}")
            elif code not in documented | {"(reply)"}:
                problems.append(f"{name}: {sent.what} answered an undocumented code {code!r}")
    print(f"{sum(len(p) for p in plans.values())} frames; answers: {dict(codes.most_common())}")
    assert codes[ErrorCode.INVALID] > 1000  # most extremes are refused by the schema, before any handler
    assert problems == [], "\n".join(problems[:60])

    # The log stayed bounded: every line, and all of it.
    text = running.log.read_bytes()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= MAX_LOG_RECORD
    assert len(text) < 16 * 2**20, f"{len(text):,} bytes of log for {sum(len(p) for p in plans.values())} frames"


def test_notices_replies_and_events_of_every_type_are_never_answered(running: Running):
    # Every kind that is not a request, valid or not, sent to every actor: silence, then a ping still answers.
    directory = running.system.directory
    kinds = [cls for cls in CATALOG if not issubclass(cls, Request)]
    assert any(issubclass(cls, Notice) for cls in kinds)
    for name in directory:
        frames = []
        for cls in kinds:
            for _, body in list(extreme_bodies(cls, overrides(name)))[:3]:
                if pack(body) is not None:
                    msg_id, frame = envelope(cls.TYPE, body, name)
                    frames.append(Sent(frame, msg_id, cls.TYPE, answered=False))
        outcome = exchange(directory[name].address, frames)
        assert outcome.replies == {}, f"{name} answered {sorted(outcome.replies)[:5]}"
        assert outcome.anonymous == []
        ping(directory[name].address, name)
