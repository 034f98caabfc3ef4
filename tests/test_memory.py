"""The memory actor: slots with one writer per frame, and a store that keeps what it acknowledged."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import trio
import trio.testing

from actors.memory import (
    MIGRATIONS,
    BadValue,
    MemoryActor,
    MemoryLimit,
    Migration,
    SlotConflict,
    SlotTable,
    Store,
)
from actors.memory import _store as ops
from actors.memory._actor import INLINE_BYTES
from actors.memory._store import WriteOp
from protocol import ConfigError, IllegalTransition, NotFound, StoreFull, StoreUnavailable, pack
from protocol.calibration_model import CalibrationFits, Crosstalk, FitResiduals, FitUncertainties
from protocol.circuit import Circuit
from protocol.hal import Temperature
from protocol.memory import (
    Allocate,
    Allocated,
    Clear,
    CommitFrame,
    Export,
    Free,
    GetCalibration,
    GetJob,
    GetPlan,
    GetStoreInfo,
    ListCalibrations,
    Procedure,
    PutCalibration,
    PutJob,
    PutPlan,
    QueryDeviceResults,
    QueryEvents,
    QueryJobs,
    QueryResults,
    Read,
    SetJobState,
    SlotSpec,
    SlotValue,
    Write,
    Written,
)
from protocol.plan import Plan, PlanMetrics
from runtime import Actor, RemoteError

from .helpers import awen_cli, eventually
from .stack import mem_runtime

# --- slots ---------------------------------------------------------------------------------


def table(**limits: int) -> SlotTable:
    t = SlotTable(max_job_bytes=limits.get("job", 1 << 20), max_total_bytes=limits.get("total", 1 << 22))
    t.allocate(
        "j",
        [SlotSpec(name="counts", dtype="int64", shape=[4]), SlotSpec(name="blob", dtype="bytes", shape=[8])],
        [SlotSpec(name="reg", dtype="int32"), SlotSpec(name="hist", dtype="float64", shape=[2])],
        {"reg": 5},
        device="chip",
    )
    return t


def test_a_second_writer_in_the_same_frame_is_refused_naming_the_slot_and_both_writers():
    t = table()
    t.write("j", 0, "executor", [("counts", np.arange(4))])
    with pytest.raises(SlotConflict, match=r"slot 'counts' .* frame 0 by 'executor'; 'feedforward' may not"):
        t.write("j", 0, "feedforward", [("counts", np.ones(4, dtype=np.int64))])
    assert list(t.read("j", ["counts"])["counts"]) == [0, 1, 2, 3]  # the first write stands
    snapshot = t.prepare_commit("j", 0)
    t.finish_commit("j")
    assert [name for name, _ in snapshot.results] == ["counts"]
    t.write("j", 1, "feedforward", [(0, np.ones(4, dtype=np.int64))])  # next frame, by dense id
    with pytest.raises(SlotConflict, match=r"frame 0 .* was committed already; the open frame is 1"):
        t.write("j", 0, "late", [("blob", b"x")])


@pytest.mark.parametrize(
    ("slot", "value", "problem"),
    [
        ("counts", np.arange(4.0), "is int64, got an array of float64"),
        ("counts", np.arange(4, dtype=np.int32), "is int64, got an array of int32"),
        ("counts", np.arange(5), r"has shape \(4,\), got \(5,\)"),
        ("counts", np.arange(4, dtype=">i8"), "non-native byte order"),
        ("counts", 3, r"has shape \(4,\), got a scalar int"),
        ("reg", 2.0, "is int32, got float"),
        ("reg", 2**40, "out of its range"),
        ("reg", True, "is int32, got bool"),
        ("hist", [1.0, 2.0], "is float64, got list"),
        ("blob", "text", "holds bytes, got str"),
        ("blob", b"123456789", "at most 8 bytes, got 9"),
    ],
)
def test_a_value_of_another_dtype_or_shape_is_refused_never_converted(slot, value, problem):
    t = table()
    good = ("hist", np.array([1.0, 2.0])) if slot != "hist" else ("reg", 3)
    with pytest.raises(BadValue, match=problem):
        t.write("j", 0, "w", [good, (slot, value)])
    assert not np.any(t.read("j", [good[0]])[good[0]] == good[1])  # all or nothing: the good value was not stored
    t.write("j", 0, "w", [good])  # and nobody holds its slot


def test_the_state_buffer_starts_from_the_constant_pool_survives_frames_and_clears_to_it():
    t = table()
    assert t.read("j", ["reg"])["reg"] == 5
    t.write("j", 0, "ff", [("reg", 9), ("hist", np.array([1.0, 2.0]))])
    t.prepare_commit("j", 0)
    t.finish_commit("j")
    assert t.read("j", ["reg"])["reg"] == 9
    t.clear("j", ["reg"])
    assert t.read("j", ["reg"])["reg"] == 5
    t.clear("j")
    assert list(t.read("j")["hist"]) == [0.0, 0.0]


def test_allocations_past_the_byte_limits_fail_at_allocation():
    t = SlotTable(max_job_bytes=1000, max_total_bytes=1500)
    with pytest.raises(MemoryLimit, match="job 'big' asks for 8,000 bytes of slots; the limit per job is 1,000"):
        t.allocate("big", [SlotSpec(name="x", dtype="float64", shape=[1000])], device="chip")
    t.allocate("a", [SlotSpec(name="x", dtype="float64", shape=[100])], device="chip")
    with pytest.raises(MemoryLimit, match="800 of 1,500 are held by other jobs"):
        t.allocate("b", [SlotSpec(name="x", dtype="float64", shape=[100])], device="chip")
    t.free("a")
    t.allocate("b", [SlotSpec(name="x", dtype="float64", shape=[100])], device="chip")


def test_layout_mistakes_are_named():
    t = SlotTable(max_job_bytes=1000, max_total_bytes=1000)
    with pytest.raises(Exception, match="repeated: x"):
        t.allocate("j", [SlotSpec(name="x", dtype="bool")], [SlotSpec(name="x", dtype="bool")], device="d")
    with pytest.raises(Exception, match="not state slots: y"):
        t.allocate("j", [SlotSpec(name="y", dtype="bool")], [], {"y": True}, device="d")
    with pytest.raises(BadValue, match="slot 'r' is int32, got float"):
        t.allocate("j", [], [SlotSpec(name="r", dtype="int32")], {"r": 1.5}, device="d")
    with pytest.raises(NotFound, match="no slot 'z' \\(slots: none\\)"):
        t.allocate("j", [], device="d").slot("z")


# --- the store on its own --------------------------------------------------------------------


def store_with_a_job(path: Path, **kwargs: Any) -> Store:
    store = Store(path, **kwargs)
    store.write(ops.put_job("j1", Circuit(modes=2), shots=10, priority=1, device="chip", deadline=None, submitter="me"))
    return store


def test_the_schema_is_versioned_and_migrated_forward_keeping_the_data(tmp_path):
    path = tmp_path / "store.sqlite3"
    store_with_a_job(path).close()
    extra = Migration(MIGRATIONS[-1].version + 1, "a note per job", "ALTER TABLE jobs ADD COLUMN note TEXT")
    store = Store(path, migrations=(*MIGRATIONS, extra))
    assert store.schema_version == extra.version
    assert store.read(ops.get_job("j1")).circuit == Circuit(modes=2)
    store.close()
    newer = rf"schema version {extra.version}, newer than this awen knows \({MIGRATIONS[-1].version}\).*Upgrade awen"
    with pytest.raises(StoreUnavailable, match=newer):
        Store(path)


def test_a_corrupt_store_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "store.sqlite3"
    path.write_bytes(b"this is not a database, it is a text file " * 100)
    with pytest.raises(StoreUnavailable, match=r"is corrupt .* move the file .* aside and restore it from a backup"):
        Store(path)


def test_a_data_directory_that_cannot_be_created_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "file").write_text("a file where the data directory should be")
    with pytest.raises(StoreUnavailable, match=r"cannot create the data directory .*: create it, or set data_dir"):
        Store(tmp_path / "file" / "data" / "store.sqlite3")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_store_without_permission_is_refused_with_what_to_do(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreUnavailable, match=r"data directory .* is not writable by this user"):
            Store(locked / "store.sqlite3")
    finally:
        locked.chmod(0o700)
    path = tmp_path / "store.sqlite3"
    store_with_a_job(path).close()
    path.chmod(0o400)
    with pytest.raises(StoreUnavailable, match="not readable and writable by this user: fix its permissions"):
        Store(path)


def test_a_full_store_refuses_the_write_keeps_everything_before_and_recovers(tmp_path):
    path = tmp_path / "store.sqlite3"
    store = store_with_a_job(path, max_bytes=512 * 1024)
    snapshot = table().prepare_commit("j", 0)
    huge = CalibrationFits(phi0=[0.0] * 100_000, alpha=[1.0] * 100_000)
    big = ops.put_calibration("chip", "id", ops.StoredCalibration(fits=huge), "too large")
    with pytest.raises(StoreFull, match=r"is full while writing .* free space .*nothing of this request was written"):
        store.write(big)
    store.write(ops.put_job("j", None, shots=0, priority=0, device="chip", deadline=None, submitter=""))
    assert store.write(ops.commit_frame(snapshot, phase=0, device="chip", plan=None, calibration=None)) == 0
    assert store.read(ops.get_job("j")).frames == 1
    assert store.read(ops.get_job("j1")).state == "queued"
    store.close()


def test_a_job_that_was_running_when_the_process_ended_is_marked_interrupted(tmp_path):
    path = tmp_path / "store.sqlite3"
    store = store_with_a_job(path)
    store.write(ops.set_job_state("j1", "planned", ""))
    store.write(ops.set_job_state("j1", "running", ""))
    store.close()
    reopened = Store(path)
    assert reopened.interrupted
    assert reopened.interrupted[0][0] == "j1"
    record = reopened.read(ops.get_job("j1"))
    assert record.state == "interrupted"
    assert "awen stopped while the job was running" in record.reason
    assert [t.state for t in record.transitions] == ["queued", "planned", "running", "interrupted"]


def test_plans_and_calibrations_the_previous_awen_stored_read_back_typed(tmp_path):
    # It packed a plan's body as a map (msgspec.to_builtins) and a calibration's values as numpy arrays, in
    # maps that could be empty.
    plan = execution_plan("p-old", 1)
    calibration = {
        "fits": {
            "phi0": np.zeros(2),
            "alpha": np.ones(2),
            "crosstalk": {"rows": np.array([0]), "cols": np.array([1]), "values": np.array([0.01])},
        },
        "uncertainties": {},
        "residuals": {"rms": 0.5, "reduced_chi2": 1.25, "iterations": 7},
        "data": {"job": "cal-1", "points": 8, "fitted_heaters": np.array([0, 1]), "degraded_outputs": []},
    }

    def write_as_before(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO plans (id, job, device, calibration, body, metrics, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("p-old", None, "chip", 1, pack(msgspec.to_builtins(plan)), "{}", 0.0),
        )
        conn.execute(
            "INSERT INTO calibrations (device, version, identity, created, note, body) VALUES (?, ?, ?, ?, ?, ?)",
            ("chip", 1, "PHX", 0.0, "", pack(calibration)),
        )
        conn.execute(
            "INSERT INTO plans (id, job, device, calibration, body, metrics, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("p-odd", None, "chip", 1, pack({"phases": [1, 2]}), "{}", 0.0),
        )

    store = Store(tmp_path / "store.sqlite3")
    store.write(write_as_before)
    assert store.read(ops.get_plan("p-old")).body == plan
    stored = store.read(ops.get_calibration("chip", None))
    crosstalk = Crosstalk(rows=[0], cols=[1], values=[0.01])
    assert stored.fits == CalibrationFits(phi0=[0.0, 0.0], alpha=[1.0, 1.0], crosstalk=crosstalk)
    assert stored.uncertainties == FitUncertainties()
    assert stored.residuals == FitResiduals(rms=0.5, reduced_chi2=1.25, iterations=7)
    assert (stored.data.job, stored.data.points, stored.data.fitted_heaters) == ("cal-1", 8, [0, 1])
    with pytest.raises(StoreUnavailable, match=r"the stored plan 'p-odd' does not read as a Plan .*another awen"):
        store.read(ops.get_plan("p-odd"))
    store.close()


def test_a_procedure_is_stored_as_the_map_it_always_was_and_read_back_as_a_procedure(tmp_path):
    store = Store(tmp_path / "store.sqlite3")

    def put(job: str, work: Any) -> tuple[str, int, bool]:
        return store.write(ops.put_job(job, work, shots=10, priority=0, device="chip", deadline=None, submitter=""))

    sweep = Procedure(description="calibration of chip", plan="p-sweep")
    put("new", sweep)
    old = {"procedure": "calibration of chip", "plan": "p-sweep"}  # how the scheduler stored one before
    put("old", old)
    assert put("old", sweep) == ("old", 2, False)  # the same bytes: the same job
    for job in ("new", "old"):
        assert store.read(ops.get_job(job)).procedure == sweep
    put("circuit", {"modes": 2})  # as the scheduler stored a circuit before: msgspec.to_builtins of it
    assert store.read(ops.get_job("circuit")).circuit == Circuit(modes=2)
    assert store.read(ops.get_job("circuit")).procedure is None
    assert store.read(ops.get_job("new")).circuit is None
    put("odd", {"modes": "two"})
    with pytest.raises(StoreUnavailable, match=r"circuit of job 'odd' does not read as a circuit or a procedure"):
        store.read(ops.get_job("odd"))
    store.close()
    with pytest.raises(msgspec.ValidationError, match="a job is a circuit or a procedure, not both"):
        msgspec.convert({"job": "j", "circuit": {"modes": 2}, "procedure": old}, PutJob)


def test_illegal_transitions_are_refused_with_the_allowed_ones(tmp_path):
    store = store_with_a_job(tmp_path / "store.sqlite3")
    with pytest.raises(IllegalTransition, match=r"cannot go from queued to completed; .* may go to cancelled, failed"):
        store.write(ops.set_job_state("j1", "completed", ""))
    store.write(ops.set_job_state("j1", "cancelled", "user asked"))
    with pytest.raises(IllegalTransition, match=r"nothing \(it is final\)"):
        store.write(ops.set_job_state("j1", "queued", ""))


def test_a_refused_operation_does_not_undo_the_others_in_its_transaction(tmp_path):
    store = store_with_a_job(tmp_path / "store.sqlite3")
    results = store.run_batch(
        [
            ops.set_job_state("nope", "planned", ""),
            ops.put_calibration("chip", "id", ops.StoredCalibration(fits=fits(1.0)), ""),
            ops.set_job_state("j1", "planned", ""),
        ]
    )
    assert isinstance(results[0], NotFound)
    assert results[1] == 1
    assert store.read(ops.get_job("j1")).state == "planned"


# --- the actor ---------------------------------------------------------------------------------


@asynccontextmanager
async def memory(data_dir: Path, **config: Any) -> AsyncIterator[tuple[MemoryActor, Actor]]:
    runtime = mem_runtime("memory", "me")
    actor = MemoryActor("memory", runtime, data_dir=str(data_dir), **config)
    client = Actor("me", runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await nursery.start(client.run)
        yield actor, client
        nursery.cancel_scope.cancel()


def fits(alpha: float) -> CalibrationFits:
    """A calibration of a one-heater device."""
    return CalibrationFits(phi0=[0.0], alpha=[alpha])


def execution_plan(plan: str, calibration: int | None = None) -> Plan:
    """A plan as the memory actor stores it: what its phases hold is the scheduler's business."""
    metrics = PlanMetrics(total_duration_s=0.0, phases=0, ops=0, min_slack_ns=None, compile_s=0.0, reconfigurations=0)
    return Plan(
        id=plan,
        circuit="c",
        device="chip",
        identity="PHX",
        calibration=calibration,
        strategy="static",
        modes=2,
        phases=[],
        metrics=metrics,
    )


SLOTS = [SlotSpec(name="counts", dtype="int64", shape=[4]), SlotSpec(name="raw", dtype="float32", shape=[512, 512])]


async def test_a_job_from_submission_to_exported_results(tmp_path):
    async with memory(tmp_path) as (_, me), me.open_event_stream("mem.") as events:
        ask = me.request
        assert (await ask("memory", PutJob(job="hom-1", circuit=Circuit(modes=2), shots=100, device="chip"))).created
        again = await ask("memory", PutJob(job="hom-1", circuit=Circuit(modes=2), shots=100, device="chip"))
        assert (again.seq, again.created) == (1, False)
        with pytest.raises(RemoteError, match=r"a different job 'hom-1' is stored already .*\[exists\]"):
            await ask("memory", PutJob(job="hom-1", circuit=Circuit(modes=3), shots=100, device="chip"))
        version = (await ask("memory", PutCalibration(device="chip", identity="PHX", fits=fits(1.0)))).version
        body = execution_plan("p-abc", version)
        plan = PutPlan(plan="p-abc", job="hom-1", device="chip", calibration=version, body=body)
        assert (await ask("memory", plan)).created
        assert not (await ask("memory", plan)).created
        await ask("memory", SetJobState(job="hom-1", state="planned", plan="p-abc", calibration=version))
        await ask("memory", SetJobState(job="hom-1", state="running"))
        allocated = await ask(
            "memory", Allocate(job="hom-1", slots=SLOTS, device="chip", plan="p-abc", calibration=version)
        )
        assert allocated.nbytes == 32 + 512 * 512 * 4
        assert allocated.frame == 0
        raw = np.random.default_rng(1).random((512, 512), dtype=np.float32)  # 1 MiB through the wire
        for frame in range(3):
            values = [SlotValue(slot="counts", value=np.arange(4) * frame), SlotValue(slot=1, value=raw)]
            await ask("memory", Write(job="hom-1", frame=frame, writer="executor", values=values, commit=True))
        await ask(
            "memory",
            Write(job="hom-1", frame=3, writer="executor", values=[SlotValue(slot=0, value=np.ones(4, np.int64))]),
        )
        assert list((await ask("memory", Read(job="hom-1", slots=["counts"]))).values["counts"]) == [1, 1, 1, 1]
        await ask("memory", CommitFrame(job="hom-1", frame=3, phase=7))
        await ask("memory", SetJobState(job="hom-1", state="completed"))

        results = await ask("memory", QueryResults(job="hom-1", slots=["counts"]))
        assert not results.partial
        assert [list(r.value) for r in results.results] == [[0, 0, 0, 0], [0, 1, 2, 3], [0, 2, 4, 6], [1, 1, 1, 1]]
        last = results.results[-1]
        assert (last.device, last.calibration, last.plan, last.phase) == ("chip", version, "p-abc", 7)
        raws = await ask("memory", QueryResults(job="hom-1", slots=["raw"]))
        assert len(raws.results) == 3
        assert np.array_equal(raws.results[0].value, raw)

        npz = await ask("memory", Export(job="hom-1"))
        with np.load(npz.path) as exported:
            assert exported["counts"].shape == (4, 4)
            assert list(exported["counts.frames"]) == [0, 1, 2, 3]
            assert np.array_equal(exported["raw"][2], raw)
            meta = json.loads(str(exported["meta"]))
        assert (meta["calibration"], meta["plan"], meta["partial"]) == (version, "p-abc", False)
        json_path = trio.Path((await ask("memory", Export(job="hom-1", format="json"))).path)
        as_json = json.loads(await json_path.read_text())
        assert as_json["results"]["counts"]["values"][2] == [0, 2, 4, 6]
        assert as_json["provenance"][0]["calibration"] == version

        seen = []
        with trio.fail_after(5):
            async for event in events:
                if event.type != "mem.calibration_added":
                    seen.append((event.type, getattr(event.body, "state", None)))
                if event.type == "mem.results_complete":
                    assert (event.body.frames, event.body.results, event.body.partial) == (4, 7, False)
                    break
        assert seen[:4] == [
            ("mem.job_state_changed", "queued"),
            ("mem.job_state_changed", "planned"),
            ("mem.job_state_changed", "running"),
            ("mem.job_state_changed", "completed"),
        ]
        record = (await ask("memory", GetJob(job="hom-1"))).record
        assert (record.state, record.frames, record.results, record.calibration) == ("completed", 4, 7, version)
        assert (await ask("memory", GetPlan(plan="p-abc"))).body == body
        await ask("memory", Free(job="hom-1"))
        with pytest.raises(RemoteError, match=r"job 'hom-1' has no slots allocated .*\[not-found\]"):
            await ask("memory", Read(job="hom-1"))


async def test_commits_leave_the_wal_to_a_checkpoint_beside_the_writer(tmp_path, autojump_clock_for_threads):
    def in_the_database_file() -> int:  # immutable: the file as it is, without the WAL
        uri = f"{(tmp_path / 'store.sqlite3').absolute().as_uri()}?immutable=1"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
            except sqlite3.DatabaseError:  # not even the schema copied yet, or caught mid-checkpoint: look again
                return 0

    async with memory(tmp_path, checkpoint_s=0.05) as (_, me):
        for i in range(20):
            await me.request("memory", PutJob(job=f"j{i}", circuit=Circuit(modes=2, shots=i + 1)))

        async def all_there() -> bool:
            return await trio.to_thread.run_sync(in_the_database_file) == 20

        await eventually(all_there, within=10)
        assert (await me.request("memory", GetJob(job="j19"))).record.state == "queued"


async def test_a_first_write_that_overtakes_its_jobs_acceptance_waits_for_it(tmp_path):
    """The scheduler may dispatch a job while its acceptance commits; the executor's first write says so."""

    def first_write(job: str) -> Write:
        allocate = Allocate(job=job, slots=SLOTS[:1], device="chip", mark_running="on exec", accepting=True)
        counts = SlotValue(slot="counts", value=np.arange(4, dtype=np.int64))
        return Write(job=job, frame=0, writer="exec", values=[counts], commit=True, allocate=allocate)

    async with memory(tmp_path, accept_wait_s=0.5) as (_, me):
        written = []

        async def executor() -> None:
            written.append(await me.request("memory", first_write("j1")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor)
            await trio.testing.wait_all_tasks_blocked()
            assert not written  # it waits: the job is not stored yet
            await me.request("memory", PutJob(job="j1", circuit=Circuit(modes=2), plan="p-1"))
        assert written[0].committed
        record = (await me.request("memory", GetJob(job="j1"))).record
        assert (record.state, record.frames) == ("running", 1)  # the running mark came after the acceptance
        with pytest.raises(RemoteError, match=r"no job 'ghost' .* did not come within accept_wait_s = 0.5 s"):
            await me.request("memory", first_write("ghost"))
        with pytest.raises(RemoteError, match=r"no job 'other' in the store.*\[not-found\]"):  # not accepting: at once
            await me.request("memory", Allocate(job="other", slots=SLOTS[:1], device="chip"))
        await me.request("memory", SetJobState(job="j1", state="completed"))
        with pytest.raises(RemoteError, match=r"job 'j1' is completed: it is not run \(again\)"):
            await me.request("memory", first_write("j1"))


async def test_a_job_cancelled_before_it_runs_is_not_allocated_and_an_ended_one_keeps_no_state(tmp_path):
    allocate = Allocate(job="j", slots=SLOTS[:1], state=[SlotSpec(name="n", dtype="int64")], device="chip")
    async with memory(tmp_path) as (_, me):
        await me.request("memory", PutJob(job="j", circuit=Circuit(modes=2), plan="p-1"))
        await me.request("memory", SetJobState(job="j", state="cancelled", reason="by the user"))
        with pytest.raises(RemoteError, match=r"job 'j' is cancelled: it is not run \(again\)"):
            await me.request("memory", msgspec.structs.replace(allocate, mark_running="on exec"))
        await me.request("memory", PutJob(job="k", circuit=Circuit(modes=2), plan="p-1"))
        values = [SlotValue(slot="counts", value=np.ones(4, np.int64)), SlotValue(slot="n", value=7)]
        first = msgspec.structs.replace(allocate, job="k", mark_running="on exec")
        await me.request("memory", Write(job="k", frame=0, writer="x", values=values, commit=True, allocate=first))
        values[1] = SlotValue(slot="n", value=8)
        last = Write(job="k", frame=1, writer="x", values=values, commit=True, finish="completed")
        await me.request("memory", last)
        record = (await me.request("memory", GetJob(job="k"))).record
        assert (record.state, record.frames, record.results) == ("completed", 2, 2)
        # An ended job never resumes: its last frame does not store the state buffer (n = 8).
        store = Store(tmp_path / "store.sqlite3", readonly=True)
        try:
            assert store.read(ops.load_state("k"))[1:] == (2, {"n": np.int64(7)})
        finally:
            store.close()


async def test_a_job_cancelled_in_the_same_transaction_as_its_acceptance_is_not_allocated(tmp_path):
    release = threading.Event()

    def busy(conn: sqlite3.Connection) -> None:  # a big write the writer is busy with meanwhile
        release.wait(10)

    async with memory(tmp_path) as (actor, me):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor._write, WriteOp(busy, INLINE_BYTES))
            await trio.testing.wait_all_tasks_blocked()
            for request in (
                PutJob(job="j", circuit=Circuit(modes=2), plan="p-1"),
                SetJobState(job="j", state="cancelled", reason="cancelled at once"),
            ):
                nursery.start_soon(me.request, "memory", request)
                await trio.testing.wait_all_tasks_blocked()
            release.set()  # both commit in the next transaction, in that order
        assert (await me.request("memory", GetJob(job="j"))).record.state == "cancelled"
        allocate = Allocate(job="j", slots=SLOTS[:1], device="chip", mark_running="on exec", accepting=True)
        with pytest.raises(RemoteError, match=r"job 'j' is cancelled: it is not run \(again\)"):
            await me.request("memory", allocate)


async def test_queries_by_state_device_and_time_and_calibration_versions(tmp_path):
    async with memory(tmp_path) as (_, me):
        for i, device in enumerate(["a", "b", "a", "b"]):
            await me.request("memory", PutJob(job=f"j{i}", circuit=None, device=device))
        await me.request("memory", SetJobState(job="j2", state="cancelled", reason="user"))
        queued = await me.request("memory", QueryJobs(states=["queued"]))
        assert [j.job for j in queued.jobs] == ["j0", "j1", "j3"]
        on_a = await me.request("memory", QueryJobs(device="a"))
        assert [(j.job, j.state, j.reason) for j in on_a.jobs] == [
            ("j0", "queued", "accepted"),
            ("j2", "cancelled", "user"),
        ]
        cut = on_a.jobs[1].submitted
        assert [j.job for j in (await me.request("memory", QueryJobs(since=cut))).jobs] == ["j2", "j3"]
        assert [j.job for j in (await me.request("memory", QueryJobs(until=cut))).jobs] == ["j0", "j1"]

        for k in range(3):
            await me.request("memory", PutCalibration(device="a", identity="PHX", fits=fits(k + 1)))
        await me.request("memory", PutCalibration(device="b", identity="PHX", fits=fits(9)))
        assert (await me.request("memory", GetCalibration(device="a"))).fits == fits(3)
        assert (await me.request("memory", GetCalibration(device="a", version=1))).fits == fits(1)
        with pytest.raises(RemoteError, match="no calibration version 7 of device 'a'"):
            await me.request("memory", GetCalibration(device="a", version=7))
        listed = await me.request("memory", ListCalibrations(device="a"))
        assert [c.version for c in listed.calibrations] == [1, 2, 3]

        await me.request("memory", Allocate(job="j1", slots=SLOTS[:1], device="b"))
        await me.request(
            "memory",
            Write(job="j1", frame=0, writer="x", values=[SlotValue(slot=0, value=np.zeros(4, np.int64))], commit=True),
        )
        on_b = await me.request("memory", QueryDeviceResults(device="b"))
        assert [(r.job, r.slot, r.value) for r in on_b.results] == [("j1", "counts", None)]
        info = await me.request("memory", GetStoreInfo())
        assert info.jobs == {"queued": 3, "cancelled": 1}
        assert info.calibrations == 4
        assert info.allocated_jobs == 1


async def test_other_actors_events_go_to_the_event_log(tmp_path, autojump_clock_for_threads):
    async with memory(tmp_path) as (_, me):
        me.publish(Temperature(device="chip", celsius=25.5))

        async def logged_events() -> list[Any]:
            return (await me.request("memory", QueryEvents(prefix="hal."))).events

        logged = await eventually(logged_events)
        assert (logged[0].type, logged[0].sender, logged[0].body["celsius"]) == ("hal.temperature", "me", 25.5)


async def test_errors_are_answered_and_the_actor_keeps_serving(tmp_path):
    async with memory(tmp_path, max_job_bytes=4096) as (_, me):
        with pytest.raises(RemoteError, match=r"no job 'ghost' in the store: store it .* \[not-found\]"):
            await me.request("memory", Allocate(job="ghost", slots=SLOTS[:1], device="chip"))
        await me.request("memory", PutJob(job="j", circuit=None))
        with pytest.raises(RemoteError, match=r"the limit per job is 4,096 \[memory-limit\]"):
            await me.request("memory", Allocate(job="j", slots=SLOTS, device="chip"))
        await me.request("memory", Allocate(job="j", slots=SLOTS[:1], device="chip"))
        with pytest.raises(RemoteError, match=r"got an array of float64 \[bad-value\]"):
            await me.request(
                "memory", Write(job="j", frame=0, writer="a", values=[SlotValue(slot="counts", value=np.zeros(4))])
            )
        await me.request(
            "memory",
            Write(job="j", frame=0, writer="a", values=[SlotValue(slot="counts", value=np.zeros(4, np.int64))]),
        )
        with pytest.raises(RemoteError, match=r"by 'a'; 'b' may not write it again .* \[slot-conflict\]"):
            await me.request(
                "memory",
                Write(job="j", frame=0, writer="b", values=[SlotValue(slot="counts", value=np.zeros(4, np.int64))]),
            )
        with pytest.raises(RemoteError, match=r"cannot go from queued to running; .*\[illegal-transition\]"):
            await me.request("memory", SetJobState(job="j", state="running"))
        await me.request("memory", Clear(job="j"))
        assert (await me.request("memory", CommitFrame(job="j", frame=0))).results == 1


async def test_a_resumed_job_continues_at_its_next_frame_with_its_state(tmp_path):
    state = [SlotSpec(name="shots_done", dtype="int64")]
    async with memory(tmp_path) as (_, me):
        await me.request("memory", PutJob(job="long", circuit=None))
        await me.request("memory", Allocate(job="long", slots=SLOTS[:1], state=state, device="chip"))
        for frame in range(2):
            values = [SlotValue(slot="shots_done", value=100 * (frame + 1))]
            await me.request("memory", Write(job="long", frame=frame, writer="x", values=values, commit=True))
    async with memory(tmp_path) as (_, me):  # a new memory actor on the same store
        resumed = await me.request(
            "memory", Allocate(job="long", slots=SLOTS[:1], state=state, device="chip", resume=True)
        )
        assert resumed.frame == 2
        assert (await me.request("memory", Read(job="long", slots=["shots_done"]))).values["shots_done"] == 200
        fresh = await me.request("memory", Allocate(job="long", slots=SLOTS[:1], state=state, device="chip"))
        assert fresh.frame == 2  # frame numbers never repeat, even without resume
        assert (await me.request("memory", Read(job="long", slots=["shots_done"]))).values["shots_done"] == 0


def test_bad_configuration_is_named():
    runtime = mem_runtime()
    with pytest.raises(ConfigError, match=r"memory configuration: .*synchronous"):
        MemoryActor("memory", runtime, synchronous="sometimes")
    with pytest.raises(ConfigError, match="unknown field `datadir`"):
        MemoryActor("memory", runtime, datadir="/tmp")


def test_acknowledged_means_committed_on_disk(tmp_path):
    """What the store returns is readable by a separate connection at once (it is in the file, not a cache)."""
    store = store_with_a_job(tmp_path / "store.sqlite3")
    other = sqlite3.connect(tmp_path / "store.sqlite3")
    assert other.execute("SELECT id, state FROM jobs").fetchall() == [("j1", "queued")]
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()
    store.close()


def test_the_store_commands_read_a_data_directory(tmp_path):
    store = store_with_a_job(tmp_path / "store.sqlite3")
    store.write(ops.set_job_state("j1", "cancelled", "nobody wanted it"))
    store.close()

    def awen(*args: str) -> str:
        done = awen_cli("store", *args, "--data-dir", str(tmp_path))
        return done.stdout + done.stderr

    assert "j1                       cancelled" in awen("jobs")
    assert "queued -> cancelled   nobody wanted it" in awen("show", "j1")
    assert "mem.job_state_changed" in awen("events")
    exported = awen("export", "j1", "--format", "json", "--out", str(tmp_path / "j1.json"))
    assert "wrote" in exported
    assert json.loads((tmp_path / "j1.json").read_text())["state"] == "cancelled"
    assert "no job 'ghost' in the store" in awen("show", "ghost")


@pytest.mark.parametrize("free_first", [False, True])
async def test_an_allocation_while_the_jobs_frame_commits_continues_after_that_frame(tmp_path, free_first):
    # A restarted executor allocates the job again (resume) while the frame the
    # old one wrote is still being committed: the allocation must start after
    # that frame, with its journal, and the old commit must not touch the new
    # allocation's frame.
    release = threading.Event()
    state = [SlotSpec(name="shots_done", dtype="int64")]

    def busy(conn: sqlite3.Connection) -> None:
        release.wait(10)

    async with memory(tmp_path) as (actor, me):
        await me.request("memory", PutJob(job="j", circuit=None))
        await me.request("memory", Allocate(job="j", slots=SLOTS[:1], state=state, device="chip"))
        outcomes: dict[str, Any] = {}

        async def ask(key: str, request: Any) -> None:
            try:
                outcomes[key] = await me.request("memory", request)
            except RemoteError as exc:
                outcomes[key] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor._write, WriteOp(busy, INLINE_BYTES))
            await trio.testing.wait_all_tasks_blocked()
            values = [SlotValue(slot="shots_done", value=500), SlotValue(slot="counts", value=np.arange(4))]
            nursery.start_soon(ask, "write", Write(job="j", frame=0, writer="old", values=values, commit=True))
            await trio.testing.wait_all_tasks_blocked()
            if free_first:
                nursery.start_soon(ask, "free", Free(job="j"))
                await trio.testing.wait_all_tasks_blocked()
            again = Allocate(job="j", slots=SLOTS[:1], state=state, device="chip", resume=True)
            nursery.start_soon(ask, "allocate", again)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert isinstance(outcomes["write"], Written), outcomes["write"]
        allocated = outcomes["allocate"]
        assert isinstance(allocated, Allocated), allocated
        assert allocated.frame == 1, "the new allocation must open the frame after the committed one"
        values = (await me.request("memory", Read(job="j", slots=["shots_done"]))).values
        assert values["shots_done"] == 500
        # The new writer goes on at frame 1; frame 0 is in the store once.
        more = [SlotValue(slot="shots_done", value=900)]
        await me.request("memory", Write(job="j", frame=1, writer="new", values=more, commit=True))
        record = (await me.request("memory", GetJob(job="j"))).record
        assert record.frames == 2


@pytest.mark.parametrize("path", ["/tmp/elsewhere.npz", "../store.sqlite3", "a/../../x.npz"])
async def test_an_export_cannot_be_written_outside_the_exports_folder(tmp_path, path):
    async with memory(tmp_path) as (_, me):
        await me.request("memory", PutJob(job="j", circuit=None))
        with pytest.raises(RemoteError) as caught:
            await me.request("memory", Export(job="j", path=path))
        assert caught.value.field == "path"
        assert "leads out of it" in str(caught.value)
        inside = await me.request("memory", Export(job="j", path="mine/j.npz"))
        assert inside.path == str((tmp_path / "exports" / "mine" / "j.npz").resolve())


async def test_a_job_stored_with_its_plan_and_a_plan_made_again_in_another_time(tmp_path):
    async with memory(tmp_path) as (_, me):
        ask = me.request
        body = execution_plan("p-new", None)
        put_plan = PutPlan(plan="p-new", job="fast-1", device="chip", body=body)
        job = PutJob(job="fast-1", circuit=Circuit(modes=2), shots=10, device="chip", plan="p-new", with_plan=put_plan)
        assert (await ask("memory", job)).created
        assert (await ask("memory", GetPlan(plan="p-new"))).body == body  # one transaction stored both
        assert (await ask("memory", GetJob(job="fast-1"))).record.state == "planned"
        # The same plan compiled again (a restarted scheduler) differs only in how long it took: the same plan.
        again = msgspec.structs.replace(body, metrics=msgspec.structs.replace(body.metrics, compile_s=9.5))
        assert not (await ask("memory", PutPlan(plan="p-new", device="chip", body=again))).created
        other = msgspec.structs.replace(body, modes=body.modes + 1)
        with pytest.raises(RemoteError, match=r"a different plan 'p-new' is stored already"):
            await ask("memory", PutPlan(plan="p-new", device="chip", body=other))
        # A job whose plan is refused is not stored either.
        refused = msgspec.structs.replace(put_plan, job="fast-2", body=other)
        with pytest.raises(RemoteError, match=r"\[exists\]"):
            await ask("memory", msgspec.structs.replace(job, job="fast-2", with_plan=refused))
        with pytest.raises(RemoteError, match=r"\[not-found\]"):
            await ask("memory", GetJob(job="fast-2"))
        # A job's record and its results in one read.
        both = await ask("memory", QueryResults(job="fast-1", record=True))
        assert both.record is not None
        assert (both.record.job, both.record.plan, both.results) == ("fast-1", "p-new", [])
