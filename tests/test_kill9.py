"""kill -9 of actors while jobs run: every accepted job completes with exactly its shots, none is lost.

A short campaign of stress/kill9.py (which runs for as long as one likes): a separate simulator process,
``awen up`` with the five actors, jobs submitted with ids of their own, actors killed with SIGKILL at
moments drawn from the seed, and the store asked, at the end, about every accepted job.
"""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest

from stress.kill9 import Options, kill_schedule, print_report, run_campaign

JOBS = 4
SHOTS = (20_000, 40_000)
SHOT_RATE_HZ = 50_000.0
"""Shots per second of the simulated chip: the four jobs take about 2 s of the chip's time, so that every kill
lands inside one even on a fast machine (at the default 1e6/s they ended before the third kill)."""
WINDOW = (0.1, 0.6)
"""Kills are sent while 10-60 % of the shots are done: well inside the jobs, never after the last one ended."""


def text(report: dict[str, Any]) -> str:
    out = io.StringIO()
    print_report(report, out)
    return out.getvalue()


def assert_the_promise(report: dict[str, Any], kills: int) -> None:
    """Every accepted job completed with exactly the shots it asked for, in every phase; none was lost."""
    jobs = report["jobs"]
    assert report["kills"]["made"] == kills, text(report)  # the campaign did what it measures
    assert jobs["accepted"] >= 1, text(report)
    assert jobs["completed_exact"] == jobs["accepted"], text(report)
    assert jobs["lost"] == 0, text(report)
    assert jobs["miscounted"] == 0, text(report)
    assert report["ok"], text(report)


def options(actors: tuple[str, ...], kills: int, seed: int) -> Options:
    return Options(
        jobs=JOBS,
        kills=kills,
        seed=seed,
        actors=actors,
        shots_min=SHOTS[0],
        shots_max=SHOTS[1],
        shot_rate_hz=SHOT_RATE_HZ,
        window=WINDOW,
    )


def test_the_schedule_is_the_seeds_alone() -> None:
    one = options(("executor", "memory", "hal"), 6, seed=5)
    assert kill_schedule(one) == kill_schedule(one)
    assert kill_schedule(one) != kill_schedule(options(("executor", "memory", "hal"), 6, seed=6))
    assert all(WINDOW[0] <= k.at_work <= WINDOW[1] for k in kill_schedule(one))
    assert all(k.actor != before.actor for before, k in itertools.pairwise(kill_schedule(one)) if k.at_once)


@pytest.mark.system
@pytest.mark.timeout(300)
async def test_jobs_survive_three_kills_of_the_executor() -> None:
    report = await run_campaign(options(("executor",), 3, seed=1), say=print)
    print(text(report))
    assert_the_promise(report, kills=3)
    assert set(report["kills"]["per_actor"]) == {"executor"}


@pytest.mark.system
@pytest.mark.timeout(300)
@pytest.mark.parametrize("actor", ["memory", "scheduler", "hal", "calibration"])
async def test_jobs_survive_a_kill_of(actor: str) -> None:
    report = await run_campaign(options((actor,), 1, seed=1), say=print)
    print(text(report))
    assert_the_promise(report, kills=1)
