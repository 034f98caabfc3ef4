"""Circuits the tests run again and again, built as a client builds them."""

from __future__ import annotations

import math

from protocol.circuit import Circuit, CircuitBuilder


def hom(shots: int = 1000, *, priority: int = 0, deadline: float | None = None, theta: float = math.pi / 4) -> Circuit:
    """Hong-Ou-Mandel: two photons meet on a coupler (50:50 unless ``theta`` says otherwise), both outputs
    measured into register ``c``."""
    return (
        CircuitBuilder(2, shots=shots, priority=priority, deadline=deadline)
        .input(0)
        .input(1)
        .bs(0, 1, theta=theta)
        .measure([0, 1], "c")
        .build()
    )


def two_rounds(shots: int = 1000, *, priority: int = 0) -> Circuit:
    """HOM into register ``a``, then new photons through another coupler into ``b``: two phases, with a
    checkpoint between them where a job can be preempted, cancelled or resumed."""
    return (
        CircuitBuilder(2, shots=shots, priority=priority)
        .input(0)
        .input(1)
        .bs(0, 1)
        .measure([0, 1], "a")
        .input(0)
        .input(1)
        .bs(0, 1, theta=0.3)
        .measure([0, 1], "b")
        .build()
    )


def feed_forward(builder: CircuitBuilder, wait_ns: float) -> CircuitBuilder:
    """``builder``, whose circuit stored a photon in delay line ``m`` and measured register ``a``, goes on:
    after ``wait_ns`` the photon comes back into mode 2, its phase flipped if ``a`` read 1."""
    return builder.wait(wait_ns).load("m", 2).if_("a", 1).ps(2, math.pi).end()
