"""Metrics (decision 0015 §2): the registry, and what actors report on their heartbeats."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

from protocol import Codec, make_envelope
from protocol.system import Heartbeat, Metric
from runtime import Actor, Metrics, open_system
from runtime._liveness import REFRESH_BEATS

from .actors import TEST_CATALOG, Add, Counter
from .circuits import hom
from .stack import mem_runtime
from .test_executor import bench
from .test_system import with_crashy


def find(metrics: list[Metric], name: str) -> Metric:
    (metric,) = [m for m in metrics if m.name == name]
    return metric


def value(metrics: list[Metric], name: str, **labels: str) -> float | None:
    """The value of the series of ``labels`` of ``name`` (a histogram's count), or None if it has none."""
    for series in find(metrics, name).series:
        if series.labels == labels:
            return series.value if not series.buckets else series.count
    return None


# --- the registry ---------------------------------------------------------------------------------------


def test_a_counter_counts_per_label_values_and_does_not_go_down():
    metrics = Metrics()
    jobs = metrics.counter("awen_jobs_total", "Jobs.", labels=("state",))
    shots = metrics.counter("awen_shots_total", "Shots.")
    jobs.inc(state="completed")
    jobs.inc(2, state="completed")
    jobs.inc(state="failed")
    shots.inc(2000)
    snapshot = metrics.snapshot()
    assert find(snapshot, "awen_jobs_total").kind == "counter"
    assert value(snapshot, "awen_jobs_total", state="completed") == 3
    assert value(snapshot, "awen_jobs_total", state="failed") == 1
    assert value(snapshot, "awen_shots_total") == 2000
    assert value(metrics.snapshot(), "awen_metric_series_dropped_total") == 0
    with pytest.raises(ValueError, match="does not go down"):
        jobs.inc(-1, state="failed")
    with pytest.raises(ValueError, match="labels"):
        jobs.inc(outcome="failed")
    with pytest.raises(ValueError, match="labels"):
        jobs.inc()  # its labels left out: no series without them
    assert jobs.value(state="completed") == 3


def test_a_label_less_metric_is_reported_at_zero_from_its_registration():
    metrics = Metrics()
    metrics.counter("awen_shots_total", "Shots.")
    metrics.counter("awen_jobs_total", "Jobs.", labels=("state",))
    snapshot = metrics.snapshot()
    assert value(snapshot, "awen_shots_total") == 0
    assert find(snapshot, "awen_jobs_total").series == []


def test_a_gauge_goes_up_and_down_and_setting_its_value_again_changes_nothing():
    metrics = Metrics()
    queue = metrics.gauge("awen_queue_jobs", "Jobs queued.")
    link = metrics.gauge("awen_device_link_up", "Link.", labels=("device",))
    queue.set(5)
    queue.inc()
    queue.dec(3)
    link.set(1, device="chip")
    snapshot = metrics.report()
    assert snapshot is not None
    assert value(snapshot, "awen_queue_jobs") == 3
    assert value(snapshot, "awen_device_link_up", device="chip") == 1
    link.set(1, device="chip")
    queue.set(3)
    assert not metrics.changed
    assert metrics.report() is None
    link.set(0, device="chip")
    assert metrics.changed
    link.remove(device="chip")
    assert find(metrics.snapshot(), "awen_device_link_up").series == []


def test_a_histogram_reports_cumulative_buckets_with_inf_last_its_sum_and_count():
    metrics = Metrics()
    durations = metrics.histogram("awen_job_duration_seconds", "Jobs.", bounds=(1.0, 2.0, 5.0))
    phases = metrics.histogram("awen_phase_duration_seconds", "Phases.", Metrics.DURATION_BUCKETS, labels=("kind",))
    for seconds in (0.5, 1.0, 1.5, 3.0, 10.0):
        durations.observe(seconds)
    phases.observe(0.002, kind="shots")
    snapshot = metrics.snapshot()
    metric = find(snapshot, "awen_job_duration_seconds")
    assert (metric.kind, metric.bounds) == ("histogram", [1.0, 2.0, 5.0])
    (series,) = metric.series
    assert series.buckets == [2, 3, 4, 5]  # 1.0 falls in le=1.0: Prometheus' buckets are "less or equal"
    assert (series.sum, series.count) == (16.0, 5)
    (series,) = find(snapshot, "awen_phase_duration_seconds").series
    assert series.labels == {"kind": "shots"}
    assert series.buckets == [0] + [1] * len(Metrics.DURATION_BUCKETS)
    assert len(series.buckets) == len(Metrics.DURATION_BUCKETS) + 1


def test_series_past_the_bound_are_dropped_and_counted():
    metrics = Metrics(max_series=5)  # the dropped counter takes one
    jobs = metrics.counter("awen_jobs_total", "Jobs.", labels=("state",))
    for state in ("queued", "planned", "running", "completed"):
        jobs.inc(state=state)
    assert metrics.series == 5
    jobs.inc(state="failed")
    jobs.inc(state="failed")
    jobs.inc(state="queued")  # an existing series still counts
    snapshot = metrics.snapshot()
    assert value(snapshot, "awen_jobs_total", state="failed") is None
    assert value(snapshot, "awen_jobs_total", state="queued") == 2
    assert value(snapshot, "awen_metric_series_dropped_total") == 2
    with pytest.raises(ValueError, match="no room"):
        metrics.gauge("awen_queue_jobs", "Jobs queued.")  # a label-less metric's one series does not fit either
    histogram = metrics.histogram("awen_phase_duration_seconds", "Phases.", (1.0,), labels=("kind",))
    histogram.observe(1.0, kind="shots")
    assert find(metrics.snapshot(), "awen_phase_duration_seconds").series == []
    assert value(metrics.snapshot(), "awen_metric_series_dropped_total") == 3


@pytest.mark.parametrize("name", ["", "1st_total", "awen-shots", "awen shots", "awen_é", "a" * 129])
def test_a_metric_name_the_wire_would_refuse_is_refused_at_registration(name: str):
    with pytest.raises(ValueError, match="metric name"):
        Metrics().counter(name, "help")


@pytest.mark.parametrize("labels", [("__name",), ("de-vice",), ("a", "a"), tuple(f"l{i}" for i in range(9))])
def test_label_names_are_checked_at_registration(labels: tuple[str, ...]):
    with pytest.raises(ValueError, match="label"):
        Metrics().gauge("awen_x", "help", labels=labels)


def test_help_and_bounds_are_checked_and_a_name_is_registered_once():
    metrics = Metrics()
    with pytest.raises(ValueError, match="help"):
        metrics.counter("awen_x_total", "h" * 257)
    for bounds in ((), (2.0, 1.0), (1.0, 1.0), (1.0, float("inf")), tuple(range(64))):
        with pytest.raises(ValueError, match="bound"):
            metrics.histogram("awen_x_seconds", "help", bounds)
    shots = metrics.counter("awen_shots_total", "Shots.")
    assert metrics.counter("awen_shots_total", "Shots.") is shots  # registered again: the same counter
    with pytest.raises(ValueError, match="registered already"):
        metrics.gauge("awen_shots_total", "Shots.")
    with pytest.raises(ValueError, match="registered already"):
        metrics.counter("awen_shots_total", "Shots.", labels=("device",))
    durations = metrics.histogram("awen_d_seconds", "help", (1.0, 2.0))
    assert metrics.histogram("awen_d_seconds", "help", (1.0, 2.0)) is durations
    with pytest.raises(ValueError, match="registered already"):
        metrics.histogram("awen_d_seconds", "help", (1.0, 3.0))


def test_a_report_comes_only_when_something_changed_and_has_every_metric():
    metrics = Metrics()
    shots = metrics.counter("awen_shots_total", "Shots.")
    queue = metrics.gauge("awen_queue_jobs", "Jobs queued.")
    calls: list[int] = []
    metrics.on_collect(lambda: calls.append(1))
    first = metrics.report()
    assert first is not None
    assert metrics.report() is None
    assert metrics.report(force=True) is not None
    assert len(calls) == 3  # callbacks run before each report
    shots.inc(0)  # adds nothing, but it is an update: reported (cheaper than comparing)
    shots.inc(10)
    assert metrics.changed
    report = metrics.report()
    assert report is not None
    assert {m.name for m in report} == {"awen_shots_total", "awen_queue_jobs", "awen_metric_series_dropped_total"}
    assert value(report, "awen_shots_total") == 10
    assert not metrics.changed
    metrics.on_collect(lambda: queue.set(7))  # a callback that changes a value makes a report due
    report = metrics.report()
    assert report is not None
    assert value(report, "awen_queue_jobs") == 7


def test_a_report_is_what_the_wire_accepts_long_label_values_cut():
    metrics = Metrics()
    link = metrics.gauge("awen_device_link_up", "Link.", labels=("device",))
    link.set(1, device="x" * 1000)
    metrics.histogram("awen_d_seconds", "help", Metrics.DURATION_BUCKETS).observe(3)
    report = metrics.report()
    assert report is not None
    beat = Heartbeat(name="a", pid=1, incarnation=1, seq=0, interval=1.0, uptime=0.0, metrics=report)
    decoded = msgspec.json.decode(msgspec.json.encode(beat), type=Heartbeat)  # the schema's limits checked
    assert decoded.metrics == report
    (series,) = find(report, "awen_device_link_up").series
    assert len(series.labels["device"]) == 256


# --- on heartbeats --------------------------------------------------------------------------------------


async def beats_from(stream: trio.MemoryReceiveChannel[Any], name: str) -> Heartbeat:
    while True:
        beat = (await stream.receive()).body
        if isinstance(beat, Heartbeat) and beat.name == name:
            return beat


async def test_heartbeats_report_the_messages_an_actor_handled_as_they_grow():
    runtime = mem_runtime("counter", "client", heartbeat_interval=0.05, catalog=TEST_CATALOG)
    counter = Counter("counter", runtime)
    client = Actor("client", runtime)
    async with trio.open_nursery() as nursery:
        for actor in (counter, client):
            await nursery.start(actor.run)
        async with client.open_event_stream("sys.heartbeat") as stream:
            with trio.fail_after(10):
                reported: list[float] = []
                for n in range(1, 4):
                    await client.request("counter", Add(n=n))
                    while True:  # the next beat that reports the request handled
                        beat = await beats_from(stream, "counter")
                        handled = (
                            None
                            if beat.metrics is None
                            else value(beat.metrics, "awen_messages_handled_total", actor="counter")
                        )
                        if handled is not None and handled >= n:
                            reported.append(handled)
                            break
                assert reported == sorted(reported)
                assert reported[-1] >= 3
                assert value(beat.metrics or [], "awen_messages_failed_total", actor="counter") == 0
                assert value(beat.metrics or [], "awen_messages_malformed_total", actor="counter") == 0
        nursery.cancel_scope.cancel()


async def test_an_idle_actor_reports_its_metrics_on_its_first_beat_and_every_tenth(autojump_clock):
    runtime = mem_runtime("idle", "client", heartbeat_interval=1.0)
    idle = Actor("idle", runtime)
    client = Actor("client", runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        async with client.open_event_stream("sys.heartbeat") as stream:
            await nursery.start(idle.run)
            beats = [await beats_from(stream, "idle") for _ in range(2 * REFRESH_BEATS + 1)]
        nursery.cancel_scope.cancel()
    with_metrics = [beat.seq for beat in beats if beat.metrics is not None]
    assert with_metrics == [0, REFRESH_BEATS, 2 * REFRESH_BEATS]
    assert beats[0].metrics is not None
    assert value(beats[0].metrics, "awen_messages_handled_total", actor="idle") == 0


def test_a_heartbeat_decodes_with_its_metrics_through_the_codec():
    metrics = Metrics()
    metrics.counter("awen_shots_total", "Shots.").inc(5)
    report = metrics.report()
    beat = Heartbeat(name="a", pid=1, incarnation=1, seq=0, interval=1.0, uptime=0.0, metrics=report)
    codec = Codec(TEST_CATALOG)
    assert codec.decode(codec.encode(make_envelope(beat, sender="a", to="b", id=1))).body == beat


async def test_after_a_job_the_executor_reports_shots_and_the_memory_the_job_completed(tmp_path):
    async with bench(tmp_path) as lab, lab.client.open_event_stream("sys.heartbeat") as stream:
        job = await lab.run(hom(), "metrics-1")
        assert job.state == "completed"
        seen: dict[str, list[Metric]] = {}
        with trio.fail_after(30):
            while not {"executor", "memory", "scheduler", "hal"} <= seen.keys() or not _done(seen):
                beat = (await stream.receive()).body
                if isinstance(beat, Heartbeat) and beat.metrics is not None:
                    seen[beat.name] = beat.metrics
    executor, memory = seen["executor"], seen["memory"]
    assert (value(executor, "awen_shots_total") or 0) > 0
    assert value(executor, "awen_job_duration_seconds") == 1
    assert (value(executor, "awen_phase_duration_seconds") or 0) >= 1
    assert value(memory, "awen_jobs_total", state="completed") == 1
    assert (value(memory, "awen_store_bytes") or 0) > 0
    assert value(seen["scheduler"], "awen_submissions_total", outcome="accepted") == 1
    assert value(seen["scheduler"], "awen_queue_jobs") == 0
    assert value(seen["hal"], "awen_device_link_up", device="chip") == 1
    assert value(seen["hal"], "awen_interlocks_total", device="chip") == 0


def _done(seen: dict[str, list[Metric]]) -> bool:
    """Whether the last reports seen say the job ran: each actor reports in its own time."""
    if not {"executor", "memory", "scheduler", "hal"} <= seen.keys():
        return False
    return (
        value(seen["executor"], "awen_job_duration_seconds") == 1
        and value(seen["memory"], "awen_jobs_total", state="completed") == 1
        and value(seen["scheduler"], "awen_submissions_total", outcome="accepted") == 1
    )


async def test_the_supervisor_reports_the_restarts_of_each_actor():
    async with open_system(with_crashy(True, backoff_max=0.1)) as supervisor:
        async with supervisor.open_event_stream("sys.heartbeat") as stream:
            with trio.fail_after(30):
                while True:
                    metrics = (await beats_from(stream, supervisor.name)).metrics
                    if metrics is not None and (value(metrics, "awen_actor_restarts_total", actor="crashy") or 0) >= 2:
                        break
        supervisor.shutdown()
    assert value(metrics, "awen_actor_restarts_total", actor="alpha") == 0
