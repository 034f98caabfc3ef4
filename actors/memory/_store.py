"""The durable store: one SQLite file in WAL mode, a versioned schema, nothing acknowledged lost.

Synchronous on purpose: the memory actor calls it from its event loop for small
work and from worker threads for big work, all writes through one writer
connection (`Store.run_batch`: several operations in one transaction, the group
commit that keeps fsyncs few), reads through a second connection that WAL lets
run beside the writer (and a third for short reads on the event loop's thread). Anything the store returns has
been committed; anything it refuses names the problem and what to do.

Arrays are stored as their raw bytes with dtype and shape; free-form values
(circuits, plan bodies, fits, event bodies) as MessagePack with numpy arrays
as the protocol's ext type.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import msgspec
import numpy as np

from protocol import (
    AwenError,
    Exists,
    IllegalTransition,
    NotFound,
    StoreFull,
    StoreUnavailable,
    pack,
    unpack,
    unpack_as,
)
from protocol.calibration_model import CalibrationData, CalibrationFits, FitResiduals, FitUncertainties
from protocol.circuit import Circuit
from protocol.memory import (
    JOB_TRANSITIONS,
    Calibration,
    CalibrationInfo,
    JobRecord,
    JobState,
    LoggedEvent,
    Procedure,
    ResultRecord,
    StoredPlan,
    Transition,
)
from protocol.plan import Plan as ExecutionPlan

from ._slots import NUMPY_DTYPES, FrameSnapshot

log = logging.getLogger("awen.memory.store")

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
Synchronous = Literal["full", "normal"]


@dataclass(frozen=True, slots=True)
class WriteOp(Generic[T]):
    """A write operation, run inside `Store.run_batch`, and about how many bytes it writes.

    The memory actor commits small batches on its event loop's thread (a
    thread hop costs more than the commit) and big ones in a worker thread.
    """

    run: Callable[[sqlite3.Connection], T]
    nbytes: int = 0

    def __call__(self, conn: sqlite3.Connection) -> T:
        return self.run(conn)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs, transitions, plans, frames, results, state buffers, calibrations, event log",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            priority INTEGER NOT NULL,
            shots INTEGER NOT NULL,
            device TEXT NOT NULL,
            deadline REAL,
            submitter TEXT NOT NULL,
            circuit BLOB NOT NULL,
            submitted REAL NOT NULL,
            updated REAL NOT NULL,
            plan TEXT,
            calibration INTEGER,
            frames INTEGER NOT NULL DEFAULT 0,
            last_phase INTEGER,
            results INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_by_state ON jobs (state, seq);
        CREATE INDEX jobs_by_device ON jobs (device, submitted);
        CREATE INDEX jobs_by_time ON jobs (submitted);
        CREATE TABLE transitions (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL REFERENCES jobs (id),
            state TEXT NOT NULL,
            previous TEXT,
            reason TEXT NOT NULL,
            ts REAL NOT NULL
        );
        CREATE INDEX transitions_by_job ON transitions (job, id);
        CREATE TABLE plans (
            id TEXT PRIMARY KEY,
            job TEXT,
            device TEXT NOT NULL,
            calibration INTEGER,
            body BLOB NOT NULL,
            metrics TEXT NOT NULL,
            created REAL NOT NULL
        );
        CREATE TABLE frames (
            job TEXT NOT NULL REFERENCES jobs (id),
            frame INTEGER NOT NULL,
            phase INTEGER,
            ts REAL NOT NULL,
            PRIMARY KEY (job, frame)
        ) WITHOUT ROWID;
        CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL REFERENCES jobs (id),
            slot TEXT NOT NULL,
            frame INTEGER NOT NULL,
            phase INTEGER,
            device TEXT NOT NULL,
            calibration INTEGER,
            plan TEXT,
            dtype TEXT NOT NULL,
            shape TEXT NOT NULL,
            data BLOB NOT NULL,
            ts REAL NOT NULL,
            UNIQUE (job, slot, frame)
        );
        CREATE INDEX results_by_device ON results (device, ts);
        CREATE TABLE job_state (
            job TEXT NOT NULL REFERENCES jobs (id),
            slot TEXT NOT NULL,
            frame INTEGER NOT NULL,
            dtype TEXT NOT NULL,
            shape TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (job, slot)
        ) WITHOUT ROWID;
        CREATE TABLE calibrations (
            device TEXT NOT NULL,
            version INTEGER NOT NULL,
            identity TEXT NOT NULL,
            created REAL NOT NULL,
            note TEXT NOT NULL,
            body BLOB NOT NULL,
            PRIMARY KEY (device, version)
        ) WITHOUT ROWID;
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            type TEXT NOT NULL,
            sender TEXT NOT NULL,
            body BLOB NOT NULL
        );
        CREATE INDEX events_by_time ON events (ts);
        """,
    ),
    Migration(
        2,
        "submission keys and job tags",
        """
        ALTER TABLE jobs ADD COLUMN key TEXT;
        CREATE UNIQUE INDEX jobs_by_key ON jobs (key) WHERE key IS NOT NULL;
        CREATE TABLE job_tags (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL REFERENCES jobs (id),
            tag TEXT NOT NULL,
            UNIQUE (job, tag)
        );
        CREATE INDEX job_tags_by_tag ON job_tags (tag, job);
        """,
    ),
)
"""Every schema change, in order. A store is at the version of the last one applied
(``PRAGMA user_version``); opening it applies the ones it lacks, each in a transaction."""

SCHEMA_VERSION = MIGRATIONS[-1].version

_JOB_COLUMNS = (
    "id, seq, state, reason, priority, shots, device, deadline, submitter, submitted, updated, "
    "plan, calibration, frames, last_phase, results, key, "
    "(SELECT json_group_array(tag) FROM (SELECT tag FROM job_tags WHERE job_tags.job = jobs.id ORDER BY id))"
)
_RESULT_COLUMNS = "id, job, slot, frame, phase, device, calibration, plan, dtype, shape, ts"


def _explain(exc: sqlite3.Error, path: Path, doing: str) -> StoreUnavailable:
    """A store error that says which problem it is and what to do about it."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return StoreFull(
            f"the store {path} is full while {doing}: free space on its disk (or raise the memory actor's "
            f"max_store_bytes); nothing of this request was written ({exc})"
        )
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in str(exc) or "malformed" in str(exc):
        return StoreUnavailable(
            f"the store {path} is corrupt ({exc}) while {doing}: stop awen, move the file (and its -wal and -shm "
            "files) aside and restore it from a backup, or start with an empty data directory"
        )
    if name in ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"):
        return StoreUnavailable(
            f"the store {path} cannot be written ({exc}) while {doing}: check that the user running awen may "
            "write the file and its directory, and that the disk is not mounted read-only"
        )
    if name == "SQLITE_BUSY" or "locked" in str(exc):
        return StoreUnavailable(
            f"the store {path} is locked by another process ({exc}) while {doing}: is a second awen using the same "
            "data directory? Stop it, or give each its own data_dir"
        )
    return StoreUnavailable(f"the store {path} failed while {doing}: {exc}")


class Store:
    """One awen store: ``store.sqlite3`` in a data directory.

    Args:
        path: The database file.
        synchronous: ``full`` (default) syncs the WAL on every commit, so an
            acknowledged write survives a power cut too; ``normal`` survives a
            crash of the process but may lose the last commits on power loss.
        max_bytes: Refuse writes (``store-full``) past this file size.
        migrations: The schema history (tests pass a longer one).
        readonly: Open for reading only (the CLI's queries); never migrates.

    Raises:
        StoreUnavailable: the file cannot be opened, with why and what to do.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "full",
        max_bytes: int | None = None,
        migrations: Sequence[Migration] = MIGRATIONS,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.migrations = tuple(migrations)
        self.readonly = readonly
        self.interrupted: list[tuple[str, str]] = []
        """Jobs found running on opening (job, reason): now marked interrupted."""
        self._check_path()
        try:
            self._w = self._connect(readonly)
            self._prepare(self._w, synchronous, max_bytes)
            self.schema_version = self._migrate()
            if not readonly:
                self.interrupted = self._mark_interrupted()
            self._r = self._connect(True)
            self._r.execute("PRAGMA query_only = ON")
            self._q = self._connect(True)
            self._q.execute("PRAGMA query_only = ON")
            self._c = None if readonly else self._connect(False)
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, "opening it") from None

    def _check_path(self) -> None:
        directory = self.path.parent
        if self.readonly:
            if not self.path.exists():
                raise StoreUnavailable(f"there is no store at {self.path}: is the data directory right?")
            if not os.access(self.path, os.R_OK):
                raise StoreUnavailable(f"the store {self.path} cannot be read: no permission for this user")
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the data directory {directory} ({exc.strerror}): create it, or set data_dir to a "
                "directory this user may write"
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreUnavailable(
                f"the data directory {directory} is not writable by this user: fix its permissions, or set data_dir "
                "elsewhere (SQLite needs to create its -wal and -shm files next to the store)"
            )
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreUnavailable(
                f"the store {self.path} is not readable and writable by this user: fix its permissions "
                f"(owner uid {self.path.stat().st_uid})"
            )

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        uri = f"{self.path.absolute().as_uri()}?mode={'ro' if readonly else 'rwc'}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _prepare(self, conn: sqlite3.Connection, synchronous: Synchronous, max_bytes: int | None) -> None:
        if self.readonly:
            conn.execute("PRAGMA query_only = ON")
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # a corrupt file fails here
            return
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreUnavailable(f"the store {self.path} could not be put in WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        # Checkpoints (copying the WAL into the database file, and an fsync of it) are not run inside
        # some unlucky commit: the memory actor runs them beside the writer (`Store.checkpoint`).
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        if max_bytes is not None:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")

    def _migrate(self) -> int:
        conn = self._w
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        known = self.migrations[-1].version if self.migrations else 0
        if version > known:
            raise StoreUnavailable(
                f"the store {self.path} has schema version {version}, newer than this awen knows ({known}): it was "
                "written by a newer awen. Upgrade awen, or point data_dir at another directory; do not downgrade "
                "the file"
            )
        pending = [m for m in self.migrations if m.version > version]
        if pending and self.readonly:
            raise StoreUnavailable(
                f"the store {self.path} has schema version {version}; this awen needs {known}: start the memory "
                "actor once to migrate it"
            )
        for migration in pending:
            log.info("store %s: migrating to schema %d (%s)", self.path, migration.version, migration.description)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {migration.version}")
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated_at', ?), ('schema', ?)",
                    (repr(time.time()), str(migration.version)),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return known

    def _mark_interrupted(self) -> list[tuple[str, str]]:
        """Jobs that were running when the process ended become interrupted, with their progress kept."""
        rows = self._w.execute("SELECT id, frames FROM jobs WHERE state = 'running' ORDER BY seq").fetchall()
        if not rows:
            return []
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        found = [
            (job, f"awen stopped while the job was running (found at restart, {stamp}); {frames} frames were committed")
            for job, frames in rows
        ]
        self._w.execute("BEGIN IMMEDIATE")
        try:
            for job, reason in found:
                _transition(self._w, job, "interrupted", "running", reason, now)
            self._w.execute("COMMIT")
        except BaseException:
            self._w.execute("ROLLBACK")
            raise
        return found

    def close(self) -> None:
        for conn in (getattr(self, n, None) for n in ("_c", "_q", "_r", "_w")):
            if conn is not None:
                conn.close()

    # --- writing ----------------------------------------------------------------------------

    def run_batch(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """Run write operations in one transaction: each result, or the `AwenError` it raised.

        An operation that refuses (unknown job, illegal transition) is rolled
        back alone; a failure of the database itself (disk full, I/O error)
        rolls back the whole batch and is raised: nothing of it was written.
        """
        conn = self._w
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    conn.execute("SAVEPOINT op")
                    try:
                        results.append(op(conn))
                    except AwenError as exc:  # the operation refused; the others go on
                        conn.execute("ROLLBACK TO op")
                        results.append(exc)
                    conn.execute("RELEASE op")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, f"writing {len(ops)} operation(s)") from None
        return results

    def checkpoint(self) -> int:
        """Copy what the WAL holds into the database file, without waiting for readers or the writer
        (``PASSIVE``); the pages copied. On its own connection: run it in a worker thread."""
        if self._c is None:
            return 0
        try:
            _busy, _log, copied = self._c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, "checkpointing its WAL") from None
        return int(copied)

    def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """One operation in its own transaction (tests and tools; the actor batches)."""
        (result,) = self.run_batch([op])
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[no-any-return]

    def read(self, op: Callable[[sqlite3.Connection], T], *, quick: bool = False) -> T:
        """A read in one snapshot: on the reader connection (one worker thread at a time), or with ``quick``
        on the connection kept for short reads on the owner's own thread (the memory actor's event loop)."""
        conn = self._q if quick else self._r
        try:
            conn.execute("BEGIN")
            try:
                return op(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, "reading") from None


# --- write operations: functions of a connection, run inside `Store.run_batch` -----------------


def _statements(sql: str) -> Iterable[str]:
    return (s.strip() for s in sql.split(";") if s.strip())


def _transition(
    conn: sqlite3.Connection, job: str, state: JobState, previous: JobState | None, reason: str, ts: float
) -> None:
    conn.execute("UPDATE jobs SET state = ?, reason = ?, updated = ? WHERE id = ?", (state, reason, ts, job))
    _record_transition(conn, job, state, previous, reason, ts)


def _record_transition(
    conn: sqlite3.Connection, job: str, state: JobState, previous: JobState | None, reason: str, ts: float
) -> None:
    """A transition in the job's history and the event log (the job's row says where it is now)."""
    conn.execute(
        "INSERT INTO transitions (job, state, previous, reason, ts) VALUES (?, ?, ?, ?, ?)",
        (job, state, previous, reason, ts),
    )
    body = pack({"job": job, "state": state, "previous": previous, "reason": reason})
    conn.execute(
        "INSERT INTO events (ts, type, sender, body) VALUES (?, 'mem.job_state_changed', 'memory', ?)", (ts, body)
    )


def put_job(
    job: str,
    work: Circuit | Procedure | None,
    *,
    shots: int,
    priority: int,
    device: str,
    deadline: float | None,
    submitter: str,
    plan: str | None = None,
    calibration: int | None = None,
    key: str | None = None,
    tags: Sequence[str] = (),
) -> WriteOp[tuple[str, int, bool]]:
    """Store a job as queued, or with ``plan`` as planned: (the job, its sequence number, whether it is new).

    ``work`` goes to the row's ``circuit`` column: a circuit, or a `Procedure`
    (a map with a ``procedure`` key), as `get_job` tells them apart. With a
    ``key`` stored already, the job stored under it if it was the same
    submission (not new, whatever its state), else `Exists` naming it and
    the first differing field: the unique index on ``jobs.key``, inside the
    writer's transaction, is what makes a key name one job.
    """
    blob = pack(work)
    tags = list(dict.fromkeys(tags))

    def op(conn: sqlite3.Connection) -> tuple[str, int, bool]:
        if key is not None:
            found = conn.execute(
                "SELECT id, seq, circuit, shots, priority, deadline, submitted FROM jobs WHERE key = ?", (key,)
            ).fetchone()
            if found is not None:
                stored_tags = conn.execute("SELECT tag FROM job_tags WHERE job = ?", (found[0],)).fetchall()
                mine: dict[str, Any] = {  # the circuit holds shots, priority, deadline: they name the difference
                    "shots": shots,
                    "priority": priority,
                    "deadline": deadline,
                    "tags": set(tags),
                    "circuit": blob,
                }
                theirs: dict[str, Any] = dict(
                    zip(("circuit", "shots", "priority", "deadline"), found[2:6], strict=True)
                )
                theirs["tags"] = {tag for (tag,) in stored_tags}
                for name, value in mine.items():
                    if theirs[name] != value:
                        what = "procedure" if name == "circuit" and isinstance(work, Procedure) else name
                        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found[6]))
                        raise Exists(
                            f"the key {key!r} names job {found[0]!r}, submitted {when} with another {what}: "
                            "a key names one submission; use a new key for another",
                            field=what,
                        )
                return found[0], found[1], False
        row = conn.execute(
            "SELECT seq, circuit, shots, priority, device, deadline, key FROM jobs WHERE id = ?", (job,)
        ).fetchone()
        if row is not None:
            if tuple(row[1:6]) == (blob, shots, priority, device, deadline) and (key is None or row[6] == key):
                return job, row[0], False
            raise Exists(f"a different job {job!r} is stored already (same id, other content)", field="job")
        now = time.time()
        state, reason = ("queued", "accepted") if plan is None else ("planned", f"plan {plan}")
        cursor = conn.execute(
            "INSERT INTO jobs (id, state, reason, priority, shots, device, deadline, submitter, circuit, submitted, "
            "updated, plan, calibration, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job, state, reason, priority, shots, device, deadline, submitter, blob, now, now, plan, calibration, key),
        )
        conn.executemany("INSERT INTO job_tags (job, tag) VALUES (?, ?)", [(job, tag) for tag in tags])
        _record_transition(conn, job, "queued", None, "accepted", now)
        if plan is not None:
            _record_transition(conn, job, "planned", "queued", reason, now)
        return job, int(cursor.lastrowid or 0), True

    return WriteOp(op, len(blob))


def set_job_state(
    job: str,
    state: JobState,
    reason: str,
    *,
    expect: Sequence[JobState] | None = None,
    plan: str | None = None,
    calibration: int | None = None,
) -> WriteOp[tuple[JobState, int, int]]:
    """Move a job to ``state``; returns the state it left, and its frames and results so far."""

    def op(conn: sqlite3.Connection) -> tuple[JobState, int, int]:
        row = conn.execute("SELECT state, frames, results FROM jobs WHERE id = ?", (job,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job!r} in the store", field="job")
        previous: JobState = row[0]
        if expect is not None and previous not in expect:
            raise IllegalTransition(
                f"job {job!r} is {previous}, not {' or '.join(expect)}: not moved to {state}", field="state"
            )
        if state not in JOB_TRANSITIONS[previous]:
            allowed = ", ".join(sorted(JOB_TRANSITIONS[previous])) or "nothing (it is final)"
            raise IllegalTransition(
                f"job {job!r} cannot go from {previous} to {state}; from {previous} it may go to {allowed}",
                field="state",
            )
        now = time.time()
        _transition(conn, job, state, previous, reason, now)
        if plan is not None or calibration is not None:
            conn.execute(
                "UPDATE jobs SET plan = coalesce(?, plan), calibration = coalesce(?, calibration) WHERE id = ?",
                (plan, calibration, job),
            )
        return previous, row[1], row[2]

    return WriteOp(op)


def put_plan(
    plan: str, body: ExecutionPlan, *, job: str | None, device: str, calibration: int | None, metrics: dict[str, float]
) -> WriteOp[bool]:
    blob = pack(body)

    def op(conn: sqlite3.Connection) -> bool:
        row = conn.execute("SELECT body FROM plans WHERE id = ?", (plan,)).fetchone()
        if row is not None:
            if row[0] != blob and not _same_plan(row[0], body):
                raise Exists(f"a different plan {plan!r} is stored already (same id, other content)", field="plan")
            return False
        conn.execute(
            "INSERT INTO plans (id, job, device, calibration, body, metrics, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (plan, job, device, calibration, blob, json.dumps(metrics), time.time()),
        )
        return True

    return WriteOp(op, len(blob))


def _same_plan(stored: bytes, body: ExecutionPlan) -> bool:
    """Whether a stored plan is ``body`` made again: the same but for how long compiling it took."""
    try:
        before = unpack_as(stored, ExecutionPlan)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return pack(_timeless(before)) == pack(_timeless(body))


def _timeless(plan: ExecutionPlan) -> ExecutionPlan:
    return msgspec.structs.replace(plan, metrics=msgspec.structs.replace(plan.metrics, compile_s=0.0))


def _array_row(value: np.ndarray | bytes) -> tuple[str, str, bytes]:
    if isinstance(value, bytes):
        return "bytes", json.dumps([len(value)]), value
    return value.dtype.name, json.dumps(list(value.shape)), value.tobytes()


def commit_frame(
    snapshot: FrameSnapshot,
    *,
    phase: int | None,
    device: str,
    plan: str | None,
    calibration: int | None,
    last: bool = False,
) -> WriteOp[int]:
    """Store a frame's results and the job's state buffer; returns the result rows written.

    ``last``: the job ends with this frame, and never resumes from its state buffer: it is not stored.
    """
    results = [(name, *_array_row(value)) for name, value in snapshot.results]
    state = [] if last else [(name, *_array_row(value)) for name, value in snapshot.state]
    job, frame = snapshot.job, snapshot.frame

    def op(conn: sqlite3.Connection) -> int:
        if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job,)).fetchone() is None:
            raise NotFound(f"no job {job!r} in the store: store it (mem.put_job) before committing frames", field="job")
        now = time.time()
        try:
            conn.execute("INSERT INTO frames (job, frame, phase, ts) VALUES (?, ?, ?, ?)", (job, frame, phase, now))
        except sqlite3.IntegrityError:
            raise Exists(f"frame {frame} of job {job!r} was committed before", field="frame") from None
        conn.executemany(
            "INSERT INTO results (job, slot, frame, phase, device, calibration, plan, dtype, shape, data, ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(job, name, frame, phase, device, calibration, plan, dt, sh, data, now) for name, dt, sh, data in results],
        )
        if state:
            conn.executemany(
                "INSERT OR REPLACE INTO job_state (job, slot, frame, dtype, shape, data) VALUES (?, ?, ?, ?, ?, ?)",
                [(job, name, frame, dt, sh, data) for name, dt, sh, data in state],
            )
        conn.execute(
            "UPDATE jobs SET frames = frames + 1, last_phase = ?, results = results + ?, updated = ? WHERE id = ?",
            (phase, len(results), now, job),
        )
        return len(results)

    return WriteOp(op, sum(len(row[3]) for row in results) + sum(len(row[3]) for row in state))


class StoredCalibration(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A calibration's body as its row holds it (MessagePack); the row's columns hold the rest."""

    fits: CalibrationFits
    uncertainties: FitUncertainties = msgspec.field(default_factory=FitUncertainties)
    residuals: FitResiduals = msgspec.field(default_factory=FitResiduals)
    data: CalibrationData = msgspec.field(default_factory=CalibrationData)


def put_calibration(device: str, identity: str, body: StoredCalibration, note: str) -> WriteOp[int]:
    blob = pack(body)

    def op(conn: sqlite3.Connection) -> int:
        (latest,) = conn.execute("SELECT max(version) FROM calibrations WHERE device = ?", (device,)).fetchone()
        version = (latest or 0) + 1
        conn.execute(
            "INSERT INTO calibrations (device, version, identity, created, note, body) VALUES (?, ?, ?, ?, ?, ?)",
            (device, version, identity, time.time(), note, blob),
        )
        return version

    return WriteOp(op, len(blob))


def log_events(events: Sequence[tuple[float, str, str, bytes]]) -> WriteOp[int]:
    def op(conn: sqlite3.Connection) -> int:
        conn.executemany("INSERT INTO events (ts, type, sender, body) VALUES (?, ?, ?, ?)", events)
        return len(events)

    return WriteOp(op, sum(len(e[3]) for e in events))


# --- read operations --------------------------------------------------------------------------


def _job_record(
    row: Sequence[Any],
    *,
    circuit: Circuit | None = None,
    procedure: Procedure | None = None,
    transitions: list[Transition] | None = None,
) -> JobRecord:
    (job, seq, state, reason, priority, shots, device, deadline, submitter, submitted, updated) = row[:11]
    plan, calibration, frames, last_phase, results, key, tags = row[11:18]
    return JobRecord(
        job=job,
        seq=seq,
        state=state,
        reason=reason,
        priority=priority,
        shots=shots,
        device=device,
        deadline=deadline,
        submitter=submitter,
        submitted=submitted,
        updated=updated,
        plan=plan,
        calibration=calibration,
        frames=frames,
        last_phase=last_phase,
        results=results,
        key=key,
        tags=json.loads(tags) if tags else [],
        circuit=circuit,
        procedure=procedure,
        transitions=transitions or [],
    )


def get_job(job: str) -> Callable[[sqlite3.Connection], JobRecord]:
    def op(conn: sqlite3.Connection) -> JobRecord:
        row = conn.execute(f"SELECT {_JOB_COLUMNS}, circuit FROM jobs WHERE id = ?", (job,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job!r} in the store", field="job")
        transitions = [
            Transition(state=s, previous=p, reason=r, ts=ts)
            for s, p, r, ts in conn.execute(
                "SELECT state, previous, reason, ts FROM transitions WHERE job = ? ORDER BY id", (job,)
            )
        ]
        circuit, procedure = _stored_work(row[18], job)
        return _job_record(row, circuit=circuit, procedure=procedure, transitions=transitions)

    return op


def _stored_work(blob: bytes, job: str) -> tuple[Circuit | None, Procedure | None]:
    """What a job runs, from its row's ``circuit`` column: a circuit, a procedure (a map with a ``procedure``
    key), or neither."""
    work = unpack(blob)
    try:
        if work is None:
            return None, None
        if isinstance(work, dict) and "procedure" in work:
            return None, msgspec.convert(work, Procedure)
        return msgspec.convert(work, Circuit), None
    except msgspec.ValidationError as exc:
        raise StoreUnavailable(
            f"the stored circuit of job {job!r} does not read as a circuit or a procedure ({exc}): was it written "
            "by another awen, or is the store corrupt?"
        ) from None


def query_jobs(
    *,
    states: Sequence[JobState] = (),
    device: str | None = None,
    since: float | None = None,
    until: float | None = None,
    key: str | None = None,
    tags: Sequence[str] = (),
    limit: int = 1000,
    newest: bool = False,
) -> Callable[[sqlite3.Connection], list[JobRecord]]:
    """Jobs in submission order, the first ``limit`` of them; with ``newest``, the last ``limit``, newest first."""
    where, args = _where(
        ("state IN ({})".format(",".join("?" * len(states))), list(states)) if states else None,
        ("device = ?", [device]) if device is not None else None,
        ("submitted >= ?", [since]) if since is not None else None,
        ("submitted < ?", [until]) if until is not None else None,
        ("key = ?", [key]) if key is not None else None,
        *(("id IN (SELECT job FROM job_tags WHERE tag = ?)", [tag]) for tag in dict.fromkeys(tags)),
    )

    def op(conn: sqlite3.Connection) -> list[JobRecord]:
        order = "seq DESC" if newest else "seq"
        rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs{where} ORDER BY {order} LIMIT ?", (*args, limit))
        return [_job_record(row) for row in rows]

    return op


def _where(*clauses: tuple[str, list[Any]] | None) -> tuple[str, list[Any]]:
    present = [c for c in clauses if c is not None]
    if not present:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in present), [a for _, args in present for a in args]


def get_plan(plan: str) -> Callable[[sqlite3.Connection], StoredPlan]:
    def op(conn: sqlite3.Connection) -> StoredPlan:
        row = conn.execute(
            "SELECT id, job, device, calibration, body, metrics, created FROM plans WHERE id = ?", (plan,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no plan {plan!r} in the store", field="plan")
        return StoredPlan(
            plan=row[0],
            job=row[1],
            device=row[2],
            calibration=row[3],
            body=_read_as(ExecutionPlan, row[4], f"plan {plan!r}"),
            metrics=json.loads(row[5]),
            created=row[6],
        )

    return op


def _read_as(type_: type[T], blob: bytes, what: str) -> T:
    """A stored value as the type the protocol gives it; `StoreUnavailable` if it is not one."""
    try:
        return unpack_as(blob, type_)
    except msgspec.DecodeError as exc:
        raise StoreUnavailable(
            f"the stored {what} does not read as a {type_.__name__} ({exc}): was it written by another awen, "
            "or is the store corrupt?"
        ) from None


def _value(dtype: str, shape: str, data: bytes) -> np.ndarray | bytes:
    if dtype == "bytes":
        return bytes(data)
    return np.frombuffer(data, dtype=NUMPY_DTYPES[dtype]).reshape(json.loads(shape))


def _result(row: Sequence[Any], data: bytes | None) -> ResultRecord:
    rid, job, slot, frame, phase, device, calibration, plan, dtype, shape, ts = row[:11]
    return ResultRecord(
        id=rid,
        job=job,
        slot=slot,
        frame=frame,
        phase=phase,
        device=device,
        calibration=calibration,
        plan=plan,
        dtype=dtype,
        shape=json.loads(shape),
        ts=ts,
        value=None if data is None else _value(dtype, shape, data),
    )


def query_results(
    job: str, *, slots: Sequence[str] = (), values: bool = True
) -> Callable[[sqlite3.Connection], tuple[JobState, list[ResultRecord]]]:
    """A job's state and its results in frame order."""
    columns = _RESULT_COLUMNS + (", data" if values else "")
    where = " AND slot IN ({})".format(",".join("?" * len(slots))) if slots else ""

    def op(conn: sqlite3.Connection) -> tuple[JobState, list[ResultRecord]]:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job!r} in the store", field="job")
        rows = conn.execute(f"SELECT {columns} FROM results WHERE job = ?{where} ORDER BY frame, id", (job, *slots))
        return row[0], [_result(r, r[11] if values else None) for r in rows]

    return op


def after(first: WriteOp[Any], second: WriteOp[T]) -> WriteOp[T]:
    """Two writes as one, in one transaction: ``first``, then ``second``, whose result it gives."""

    def op(conn: sqlite3.Connection) -> T:
        first(conn)
        return second(conn)

    return WriteOp(op, first.nbytes + second.nbytes)


def together(
    first: Callable[[sqlite3.Connection], A], second: Callable[[sqlite3.Connection], B]
) -> Callable[[sqlite3.Connection], tuple[A, B]]:
    """Two reads on one connection, one after the other: what a request needs in one trip to the reader."""

    def op(conn: sqlite3.Connection) -> tuple[A, B]:
        return first(conn), second(conn)

    return op


def query_device_results(
    device: str, *, since: float | None, until: float | None, limit: int
) -> Callable[[sqlite3.Connection], list[ResultRecord]]:
    where, args = _where(
        ("device = ?", [device]),
        ("ts >= ?", [since]) if since is not None else None,
        ("ts < ?", [until]) if until is not None else None,
    )

    def op(conn: sqlite3.Connection) -> list[ResultRecord]:
        rows = conn.execute(f"SELECT {_RESULT_COLUMNS} FROM results{where} ORDER BY ts, id LIMIT ?", (*args, limit))
        return [_result(r, None) for r in rows]

    return op


def load_state(job: str) -> Callable[[sqlite3.Connection], tuple[JobState, int, dict[str, np.ndarray | bytes]]]:
    """A job's state, committed frames and its state buffer as last committed: what a resumed job starts from."""

    def op(conn: sqlite3.Connection) -> tuple[JobState, int, dict[str, np.ndarray | bytes]]:
        row = conn.execute("SELECT frames, state FROM jobs WHERE id = ?", (job,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job!r} in the store: store it (mem.put_job) before allocating", field="job")
        state = {
            slot: _value(dtype, shape, data)
            for slot, dtype, shape, data in conn.execute(
                "SELECT slot, dtype, shape, data FROM job_state WHERE job = ?", (job,)
            )
        }
        job_state: JobState = row[1]
        return job_state, int(row[0]), state

    return op


def get_calibration(device: str, version: int | None) -> Callable[[sqlite3.Connection], Calibration]:
    def op(conn: sqlite3.Connection) -> Calibration:
        if version is None:
            row = conn.execute(
                "SELECT version, identity, created, note, body FROM calibrations WHERE device = ? "
                "ORDER BY version DESC LIMIT 1",
                (device,),
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT version, identity, created, note, body FROM calibrations WHERE device = ? AND version = ?",
                (device, version),
            ).fetchone()
        if row is None:
            which = "no calibration" if version is None else f"no calibration version {version}"
            raise NotFound(f"{which} of device {device!r} in the store", field="version")
        body = _stored_calibration(row[4], f"calibration version {row[0]} of device {device!r}")
        return Calibration(
            device=device,
            version=row[0],
            identity=row[1],
            created=row[2],
            note=row[3],
            fits=body.fits,
            uncertainties=body.uncertainties,
            residuals=body.residuals,
            data=body.data,
        )

    return op


def _stored_calibration(blob: bytes, what: str) -> StoredCalibration:
    """A calibration's body; one stored before calibrations were typed holds numpy arrays where lists are now."""
    try:
        return msgspec.convert(_arrays_as_lists(unpack(blob)), StoredCalibration)
    except msgspec.DecodeError as exc:  # a ValidationError too
        raise StoreUnavailable(
            f"the stored {what} does not read as a calibration ({exc}): was it written by another awen, "
            "or is the store corrupt?"
        ) from None


def _arrays_as_lists(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _arrays_as_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_arrays_as_lists(v) for v in value]
    return value


def list_calibrations(device: str | None) -> Callable[[sqlite3.Connection], list[CalibrationInfo]]:
    where, args = _where(("device = ?", [device]) if device is not None else None)

    def op(conn: sqlite3.Connection) -> list[CalibrationInfo]:
        rows = conn.execute(
            f"SELECT device, version, identity, created, note FROM calibrations{where} ORDER BY created, version", args
        )
        return [CalibrationInfo(device=d, version=v, identity=i, created=c, note=n) for d, v, i, c, n in rows]

    return op


def query_events(
    *, prefix: str, since: float | None, until: float | None, after_seq: int, limit: int
) -> Callable[[sqlite3.Connection], list[LoggedEvent]]:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    where, args = _where(
        ("seq > ?", [after_seq]),
        ("type LIKE ? ESCAPE '\\'", [escaped + "%"]) if prefix else None,
        ("ts >= ?", [since]) if since is not None else None,
        ("ts < ?", [until]) if until is not None else None,
    )

    def op(conn: sqlite3.Connection) -> list[LoggedEvent]:
        rows = conn.execute(
            f"SELECT seq, ts, type, sender, body FROM events{where} ORDER BY seq LIMIT ?", (*args, limit)
        )
        return [LoggedEvent(seq=s, ts=ts, type=t, sender=f, body=unpack(b)) for s, ts, t, f, b in rows]

    return op


def counts() -> Callable[[sqlite3.Connection], dict[str, Any]]:
    def op(conn: sqlite3.Connection) -> dict[str, Any]:
        return {
            "jobs": dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()),
            "results": conn.execute("SELECT count(*) FROM results").fetchone()[0],
            "calibrations": conn.execute("SELECT count(*) FROM calibrations").fetchone()[0],
            "events": conn.execute("SELECT count(*) FROM events").fetchone()[0],
        }

    return op


# --- export -----------------------------------------------------------------------------------


def export_job(conn: sqlite3.Connection, job: str, fmt: Literal["npz", "json"], path: Path) -> int:
    """Write a job's results and provenance to ``path`` (atomically); returns the bytes written."""
    record = get_job(job)(conn)
    _, results = query_results(job)(conn)
    meta = _export_meta(record, results)
    buffer = io.BytesIO()
    if fmt == "npz":
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta)), "frames": np.array(meta["frames"])}
        for slot, rows in _by_slot(results).items():
            if rows[0].dtype == "bytes":
                for r in rows:
                    arrays[f"{slot}@{r.frame}"] = np.frombuffer(r.value, dtype=np.uint8)
            else:
                arrays[slot] = np.stack([r.value for r in rows])
                arrays[f"{slot}.frames"] = np.array([r.frame for r in rows], dtype=np.int64)
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    else:
        meta["results"] = {
            slot: {
                "dtype": rows[0].dtype,
                "shape": rows[0].shape,
                "frames": [r.frame for r in rows],
                "values": [_jsonable(r.value) for r in rows],
            }
            for slot, rows in _by_slot(results).items()
        }
        buffer.write(json.dumps(meta, indent=1, allow_nan=True).encode())
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return len(data)


def _by_slot(results: list[ResultRecord]) -> dict[str, list[ResultRecord]]:
    grouped: dict[str, list[ResultRecord]] = {}
    for r in results:
        grouped.setdefault(r.slot, []).append(r)
    return grouped


def _export_meta(record: JobRecord, results: list[ResultRecord]) -> dict[str, Any]:
    return {
        "job": record.job,
        "state": record.state,
        "reason": record.reason,
        "partial": record.state != "completed",
        "device": record.device,
        "shots": record.shots,
        "priority": record.priority,
        "submitted": record.submitted,
        "plan": record.plan,
        "calibration": record.calibration,
        "circuit": _jsonable(unpack(pack(record.circuit if record.circuit is not None else record.procedure))),
        "frames": sorted({r.frame for r in results}),
        "provenance": [
            {
                "slot": r.slot,
                "frame": r.frame,
                "phase": r.phase,
                "device": r.device,
                "calibration": r.calibration,
                "plan": r.plan,
                "ts": r.ts,
            }
            for r in results
        ],
        "transitions": [{"state": t.state, "reason": t.reason, "ts": t.ts} for t in record.transitions],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
