"""A process that writes to a store as fast as it can and says what was acknowledged.

``python -m tests.store_writer DATA_DIR``: stores job ``crash`` (or resumes
it), then commits frames of deterministic content, printing ``acked N`` after
each commit returned, until it is killed. tests/test_memory_system.py kills it
with SIGKILL at random moments and checks every acknowledged frame is there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from actors.memory import SlotTable, Store
from actors.memory import _store as ops
from protocol.circuit import Circuit
from protocol.memory import SlotSpec


def frame_value(frame: int) -> np.ndarray:
    """What frame ``frame`` holds: a size and content no other frame has."""
    return np.arange(frame, frame + 1 + (frame * 7919) % 4000, dtype=np.int64)


def main(data_dir: str) -> None:
    store = Store(Path(data_dir) / "store.sqlite3")
    store.write(ops.put_job("crash", Circuit(modes=2), shots=0, priority=0, device="sim", deadline=None, submitter="t"))
    record = store.read(ops.get_job("crash"))
    if record.state == "queued":
        store.write(ops.set_job_state("crash", "planned", ""))
    store.write(ops.set_job_state("crash", "running", "", expect=["planned", "interrupted"]))
    table = SlotTable(max_job_bytes=1 << 30, max_total_bytes=1 << 30)
    frame = record.frames
    print(f"resuming at {frame}", flush=True)
    while True:
        value = frame_value(frame)
        table.allocate("crash", [SlotSpec(name="v", dtype="int64", shape=[len(value)])], device="sim")
        table.restore("crash", frame, {})
        table.write("crash", frame, "writer", [("v", value)])
        snapshot = table.prepare_commit("crash", frame)
        store.write(ops.commit_frame(snapshot, phase=frame % 5, device="sim", plan="p", calibration=1))
        print(f"acked {frame}", flush=True)
        frame += 1


if __name__ == "__main__":
    main(sys.argv[1])
