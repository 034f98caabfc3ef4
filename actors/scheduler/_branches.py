"""Feed-forward: every outcome of the registers a phase reads, and the fast phases each outcome sets.

The device sets its fast phase shifters once per shot from the first pass's
clicks; it cannot decide anything else, so every outcome is planned ahead.
"""

from __future__ import annotations

import math

from protocol.plan import Branch

Condition = tuple[str, int, int, float]
"""(register, value, physical second-pass mode, phase): a conditional phase shift as placed."""


def branches(conditions: list[Condition], register_bits: dict[str, list[int]]) -> tuple[list[int], list[Branch]]:
    """The detected modes feed-forward reads, and for every click pattern of them the branch it takes."""
    used = sorted({r for r, _, _, _ in conditions})
    if not used:
        return [], []
    ff_modes = [q for r in used for q in register_bits[r]]
    planned = []
    for outcome in range(2 ** len(ff_modes)):
        pattern = format(outcome, f"0{len(ff_modes)}b")
        values: dict[str, int] = {}
        offset = 0
        for r in used:
            width = len(register_bits[r])
            values[r] = int(pattern[offset : offset + width], 2)
            offset += width
        phases: dict[int, float] = {}
        for r, v, q, phi in conditions:
            if values[r] == v:
                phases[q] = (phases.get(q, 0.0) + phi) % (2 * math.pi)
        planned.append(Branch(pattern=pattern, outcome=values, phases=phases))
    return ff_modes, planned
