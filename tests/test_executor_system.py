"""The job path in real processes: kill -9 of the executor mid-job, and the job resumes where it stopped."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import trio

from actors.jobs import wait_for_job
from actors.lab import lab_system
from protocol import AwenError
from protocol.executor import GetExecutorStatus
from protocol.memory import GetJob, PutCalibration, QueryResults
from protocol.scheduler import Submit
from runtime import RestartPolicy, RuntimeOptions, open_system
from sim import DeviceServer, serve_tcp

from .chips import CHIP, truth
from .circuits import hom
from .helpers import eventually

pytestmark = pytest.mark.system


async def test_kill_9_of_the_executor_mid_job_resumes_from_the_last_committed_frame_then_runs_the_queue(tmp_path):
    server = DeviceServer(CHIP, seed=3)
    async with trio.open_nursery() as outside:
        host, port = await outside.start(serve_tcp, server, "127.0.0.1", 0)
        config = lab_system(
            data_dir=tmp_path,
            device_url=f"tcp://{host}:{port}",
            device_options={"watchdog_s": 0},
            actors=("memory", "hal", "scheduler", "executor"),
            log_level="warning",
            runtime=RuntimeOptions(heartbeat_interval=0.2, request_timeout=20.0),
            restart=RestartPolicy(max_restarts=3, window=60, backoff=0.05),
            config={"executor": {"batch_shots": 2000}},
        )
        async with open_system(config) as sup:
            with trio.fail_after(60):
                await sup.wait_started()
            await sup.request("memory", PutCalibration(device="chip", identity="truth", fits=truth(server).fits()))
            await sup.request("scheduler", Submit(circuit=hom(200_000), job="long"))
            await sup.request("scheduler", Submit(circuit=hom(10_000), job="next"))  # waits its turn behind "long"

            async def some_frames() -> bool:
                return (await sup.request("memory", GetJob(job="long"))).record.frames >= 5

            await eventually(some_frames, within=60)
            killed = sup.pid_of("executor")
            os.kill(killed, signal.SIGKILL)

            async def resumed() -> bool:  # the restarted executor takes the job up again, before anything else
                if sup.pid_of("executor") in (None, killed):
                    return False
                try:
                    return (await sup.request("executor", GetExecutorStatus())).job == "long"
                except AwenError:
                    return False

            await eventually(resumed, within=60)

            with trio.fail_after(180):
                record = await wait_for_job(sup, "long")
            assert record.state == "completed", record.reason
            results = (await sup.request("memory", QueryResults(job="long"))).results
            assert [r.frame for r in results] == list(range(len(results)))
            assert int(np.sum([r.value for r in results], axis=0).sum()) == 200_000  # nothing lost, nothing twice

            with trio.fail_after(120):
                after = await wait_for_job(sup, "next")  # the rest of the queue runs after the resumed job
            assert after.state == "completed", after.reason
            nxt = (await sup.request("memory", GetJob(job="next"))).record
            long_done = next(t.ts for t in record.transitions if t.state == "completed")
            assert next(t.ts for t in nxt.transitions if t.state == "running") >= long_done
        outside.cancel_scope.cancel()
