"""Exponential backoff with jitter: how long to wait before trying again.

One policy for everything in awen that tries again: a driver reconnecting, a
request answered ``not-ready``, the executor retrying a device command or
waiting for an actor to come back, the supervisor restarting a crashed actor.
Sans-IO: it computes delays; the caller sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Try ``k`` (from 0) waits ``first * 2**k`` seconds, at most ``longest``, spread by ``jitter``.

    Attributes:
        first: The first wait.
        longest: No wait is longer (before jitter).
        jitter: Each wait is multiplied by a factor drawn from ``1 ± jitter``,
            so that many clients retrying at once do not do it in step. 0: exact.
    """

    first: float
    longest: float
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before try ``attempt + 1``, after ``attempt`` failed tries (0: after the first)."""
        base = min(self.longest, self.first * 2.0 ** min(max(attempt, 0), 64))
        if not self.jitter:
            return base
        draw = (rng or random).random()
        return base * (1 + self.jitter * (2 * draw - 1))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits between tries, one per failed try, without end."""
        attempt = 0
        while True:
            yield self.delay(attempt, rng)
            attempt += 1
