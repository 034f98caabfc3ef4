"""Logs (decision 0015 §3): JSON lines, and a trace through every message a client's request caused.

Unit: the JSON formatter's records (fields, bounds, tracebacks), the text formatter's job, the
envelope's optional ``trace``. On mem:// actors: a client's request starts a trace that the
handlers it causes see, and that what they send and publish carries. System: ``awen up
--log-format json``, one job submitted: its records, from the scheduler and the executor, share
the trace of its submission.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import trio

import awen
from protocol import Codec, Envelope, Event, Notice, Request, make_envelope
from protocol.catalog import CATALOG
from protocol.system import Ok, Ping
from runtime import Actor, Runtime, current_job, current_trace, handles, subscribes, traced
from runtime._logging import MAX_LOG_RECORD, BoundedFormatter, ContextFilter, JsonFormatter, configure_logging
from runtime._system import free_tcp_port

from .helpers import awen_process
from .stack import mem_runtime, start_running

# --- the JSON formatter -------------------------------------------------------------------------


def record(message: str, *args: Any, exc_info: Any = None, level: int = logging.INFO) -> logging.LogRecord:
    made = logging.LogRecord("awen.test", level, __file__, 1, message, args, exc_info)
    ContextFilter().filter(made)
    return made


def test_a_json_record_has_every_field_and_parses():
    line = JsonFormatter("scheduler").format(record("%s: accepted %s", "scheduler", "job-1"))
    fields = json.loads(line)
    assert "\n" not in line
    assert set(fields) == {"time", "level", "actor", "pid", "logger", "message"}
    assert fields["level"] == "info"
    assert fields["actor"] == "scheduler"
    assert fields["logger"] == "awen.test"
    assert fields["message"] == "scheduler: accepted job-1"
    assert isinstance(fields["pid"], int)
    # RFC 3339, UTC, milliseconds: 2024-05-01T12:34:56.789Z
    stamp = fields["time"]
    assert len(stamp) == 24
    assert (stamp[10], stamp[19], stamp[-1]) == ("T", ".", "Z")


def test_a_json_record_names_the_job_and_trace_of_what_is_handled():
    with traced(12345, "job-7"):
        fields = json.loads(JsonFormatter("executor").format(record("runs it")))
    assert fields["job"] == "job-7"
    assert fields["trace"] == 12345
    outside = json.loads(JsonFormatter("executor").format(record("idle")))
    assert "job" not in outside
    assert "trace" not in outside


def test_a_json_record_carries_the_traceback():
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        made = record("it failed", exc_info=sys.exc_info(), level=logging.ERROR)
    fields = json.loads(JsonFormatter("memory").format(made))
    assert fields["level"] == "error"
    assert fields["message"] == "it failed"
    assert "Traceback" in fields["exc"]
    assert fields["exc"].rstrip().endswith("ZeroDivisionError: division by zero")


@pytest.mark.parametrize("text", ["x" * 100_000, "\x01" * 30_000, '"\\' * 20_000, "é" * 50_000])
def test_a_json_record_is_bounded_and_still_parses(text):
    try:
        raise ValueError(text)
    except ValueError:
        made = record("quoted %s", text, exc_info=sys.exc_info())
    line = JsonFormatter("door").format(made)
    assert len(line) <= MAX_LOG_RECORD
    fields = json.loads(line)
    assert fields["message"].startswith("quoted ")  # the start of each, a note of the cut, the end
    assert "characters cut" in fields["message"]
    assert fields["exc"].startswith("Traceback")
    assert "characters cut" in fields["exc"]
    assert len(line) > MAX_LOG_RECORD // 2  # cut to fit, not to nothing


def test_a_text_line_names_its_job_unless_its_message_does():
    formatter = BoundedFormatter("%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    with traced(1, "job-9"):
        assert formatter.format(record("phase 2 done")) == "INFO awen.test: phase 2 done [job=job-9]"
        assert formatter.format(record("job-9 ended")) == "INFO awen.test: job-9 ended"
    assert formatter.format(record("idle")) == "INFO awen.test: idle"


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_picks_the_format_and_awen_log_format_overrides_it(root_logging, monkeypatch):
    monkeypatch.delenv("AWEN_LOG_FORMAT", raising=False)
    configure_logging("info", actor="hal", fmt="json")
    assert isinstance(root_logging.handlers[0].formatter, JsonFormatter)
    configure_logging("info", actor="hal")
    assert isinstance(root_logging.handlers[0].formatter, BoundedFormatter)
    monkeypatch.setenv("AWEN_LOG_FORMAT", "json")
    configure_logging("info", actor="hal", fmt="text")
    assert isinstance(root_logging.handlers[0].formatter, JsonFormatter)
    assert any(isinstance(f, ContextFilter) for f in root_logging.handlers[0].filters)


# --- the envelope's trace -----------------------------------------------------------------------


def test_a_frame_without_a_trace_is_the_frame_it_was_and_one_with_it_round_trips():
    codec = Codec(CATALOG)
    plain = codec.encode(make_envelope(Ping(data=b"hi"), sender="a", to="b", id=1, ts=5.0))
    assert "trace" not in msgpack.unpackb(plain)
    assert codec.decode(plain).trace is None
    traced_frame = codec.encode(make_envelope(Ping(data=b"hi"), sender="a", to="b", id=2, ts=5.0, trace=77))
    assert msgpack.unpackb(traced_frame)["trace"] == 77
    assert codec.decode(traced_frame).trace == 77
    old = msgpack.packb({"v": 1, "id": 3, "type": "sys.ping", "from": "a", "to": "b", "ts": 1.0, "body": {}})
    assert codec.decode(old).trace is None  # a frame from before traces (no re either)
    too_big = dict(msgpack.unpackb(traced_frame), trace=2**63)
    with pytest.raises(Exception, match="trace"):
        codec.decode(msgpack.packb(too_big))


# --- propagation on mem:// actors -----------------------------------------------------------------


class Work(Request[Ok], frozen=True, kw_only=True):
    TYPE = "test.work"
    REPLY = Ok
    job: str


class Step(Request[Ok], frozen=True, kw_only=True):
    TYPE = "test.step"
    REPLY = Ok
    job: str


class Poke(Notice, frozen=True, kw_only=True):
    TYPE = "test.poke"


class Stepped(Event, frozen=True, kw_only=True):
    TYPE = "test.stepped"
    job: str


TRACE_CATALOG = CATALOG.extended([Work, Step, Poke, Stepped])

Seen = tuple[int | None, str | None]


class Front(Actor):
    """Handles a client's work by asking `Back`, from its handler and from a task that handler starts."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        super().__init__(name, runtime)
        self.work: list[Envelope] = []
        self.seen: dict[str, Seen] = {}
        self.events: list[tuple[Envelope, Seen]] = []
        self.later = trio.Event()
        self.stepped = trio.Event()

    async def main(self) -> None:
        self.seen["main"] = (current_trace.get(), current_job.get())
        await trio.sleep_forever()

    @handles(Work)
    async def _work(self, msg: Work, env: Envelope) -> None:
        self.work.append(env)
        self.seen["work"] = (current_trace.get(), current_job.get())
        await self.request("back", Step(job=msg.job))
        self.start_soon(self._later)

    async def _later(self) -> None:
        self.seen["later"] = (current_trace.get(), current_job.get())
        await self.send("back", Poke())
        self.later.set()

    @subscribes("test.stepped")
    def _stepped(self, body: Stepped, env: Envelope) -> None:
        self.events.append((env, (current_trace.get(), current_job.get())))
        self.stepped.set()


class Back(Actor):
    def __init__(self, name: str, runtime: Runtime) -> None:
        super().__init__(name, runtime)
        self.steps: list[tuple[Envelope, Seen]] = []
        self.pokes: list[tuple[Envelope, Seen]] = []
        self.poked = trio.Event()

    @handles(Step)
    def _step(self, msg: Step, env: Envelope) -> None:  # inline
        self.steps.append((env, (current_trace.get(), current_job.get())))
        self.publish(Stepped(job=msg.job))

    @handles(Poke)
    async def _poke(self, msg: Poke, env: Envelope) -> None:  # a task
        self.pokes.append((env, (current_trace.get(), current_job.get())))
        self.poked.set()


async def test_a_clients_request_starts_a_trace_that_every_message_it_caused_carries():
    runtime = mem_runtime("client", "front", "back", catalog=TRACE_CATALOG)
    front, back, client = Front("front", runtime), Back("back", runtime), Actor("client", runtime)
    async with trio.open_nursery() as nursery:
        for actor in (back, front, client):
            await start_running(nursery, actor)
        await client.request("front", Work(job="job-1"))
        with trio.fail_after(5):
            await front.later.wait()
            await back.poked.wait()
            await front.stepped.wait()
        nursery.cancel_scope.cancel()
    (request,) = front.work
    assert request.trace is None  # the client handled nothing: its request starts the trace
    trace = request.id
    assert front.seen["work"] == (trace, "job-1")
    assert front.seen["later"] == (trace, "job-1")  # a task the handler started keeps it
    assert front.seen["main"] == (None, None)  # the actor's own loop handles nothing
    ((step, seen),) = back.steps
    assert (step.trace, seen) == (trace, (trace, "job-1"))
    ((poke, seen),) = back.pokes
    assert (poke.trace, seen) == (trace, (trace, None))  # a notice without a job keeps the trace
    ((event, seen),) = front.events
    assert (event.trace, seen) == (trace, (trace, "job-1"))
    assert (current_trace.get(), current_job.get()) == (None, None)  # nothing leaked into the test's task


# --- a job's story in the logs of a running lab ---------------------------------------------------


def json_records(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON log records among a daemon's output; its own lines (``awen: up ...``) are skipped."""
    found = []
    for line in lines:
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


@pytest.mark.system
def test_a_jobs_records_share_the_trace_of_its_submission(tmp_path, monkeypatch):
    monkeypatch.setenv("AWEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AWEN_LOG", raising=False)
    monkeypatch.delenv("AWEN_LOG_FORMAT", raising=False)
    port = free_tcp_port("127.0.0.1")
    with awen_process("up", "--port", str(port), "--modes", "4", "--no-http", "--log-format", "json") as (proc, out):
        out.until("awen: up", timeout=60)
        with awen.connect(f"tcp://127.0.0.1:{port}") as lab:
            lab.calibrate()
            job = lab.submit("examples/hom.json", shots=200)
            job.wait(timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        out.rest(timeout=30)
    records = json_records(out.seen)
    assert records, out.seen[-20:]
    assert {"time", "level", "actor", "pid", "logger", "message"} <= set(records[0])
    mine = [r for r in records if r.get("job") == job.id]
    actors = {r["actor"] for r in mine}
    assert {"scheduler", "executor"} <= actors, mine
    assert len(mine) >= 3
    traces = {r.get("trace") for r in mine if r["actor"] in ("scheduler", "executor")}
    assert len(traces) == 1, mine
    assert None not in traces
