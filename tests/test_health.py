"""The lab's readiness checks (actors.health): what /readyz shows and awen up waits for."""

from __future__ import annotations

import trio

from actors.health import Check, LabActors, lab_checks, summary
from actors.memory import MemoryActor
from runtime import Actor

from .stack import mem_runtime


async def test_the_store_is_not_ready_on_a_nearly_full_disk_and_a_missing_actor_is_named(tmp_path):
    runtime = mem_runtime("memory", "asker", "hal")
    memory = MemoryActor("memory", runtime, data_dir=str(tmp_path / "data"), synchronous="normal")
    asker = Actor("asker", runtime)
    async with trio.open_nursery() as nursery:
        await nursery.start(memory.run)
        await nursery.start(asker.run)
        fresh = {"memory": Check(True, "up")}
        roomy = await lab_checks(asker, LabActors(hal=(), calibration=()), heartbeats=fresh, min_free_bytes=1)
        assert roomy["store"].ok
        assert str(tmp_path / "data") in roomy["store"].detail
        full = await lab_checks(asker, LabActors(hal=(), calibration=()), heartbeats=fresh, min_free_bytes=2**62)
        assert not full["store"].ok
        assert "free some space or move data_dir" in full["store"].detail
        # A HAL that never answers: the check says so, within its time, and the rest are still reported.
        lost = await lab_checks(asker, LabActors(calibration=()), heartbeats={"hal": Check(False, "no heartbeat yet")})
        assert not lost["devices"].ok
        assert lost["store"].ok
        ready, line = summary(lost)
        assert not ready
        assert line.startswith("devices: ")
        assert "heartbeat.hal: no heartbeat yet" in line
        nursery.cancel_scope.cancel()
