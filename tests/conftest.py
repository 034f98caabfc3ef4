"""Fixtures the tests share, by name."""

from __future__ import annotations

import pytest
import trio.testing

AUTOJUMP_AFTER_S = 0.005
"""How long (in real time) the loop must be idle before `autojump_clock_for_threads` jumps.

pytest-trio's `autojump_clock` jumps as soon as no task can run: the right clock
for actors that only wait on each other and on timers. The memory actor reads
and writes its store in worker threads (the scheduler and calibration actors
plan and fit in them too). A clock that jumped while a thread is under way
could run a request's 10 s timeout out within one read.

Each jump costs this much real time: a test whose actors tick often (short
heartbeats) over long virtual waits is better off with `autojump_clock`.
"""


@pytest.fixture
def autojump_clock_for_threads() -> trio.testing.MockClock:
    """An autojump clock for tests whose actors do work in worker threads: it jumps only after
    `AUTOJUMP_AFTER_S` of real idleness, so a thread that is under way finishes before time moves on."""
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_AFTER_S)
