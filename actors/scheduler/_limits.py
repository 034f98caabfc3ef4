"""What the scheduler accepts (`Limits`) and what of the device it avoids (`Health`)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from protocol.hal import MAX_RULES
from protocol.plan import MAX_PHASES, MAX_PLAN_OPS


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configured limits on what the scheduler accepts (``[limits]`` of its configuration).

    Each size a client chooses has one, checked before anything in proportion
    to it is allocated (docs/circuits.md, "Limits", says why each is what it is).

    Attributes:
        max_ops: Operations in one circuit, conditionals' bodies included.
        max_modes: Logical modes a circuit may declare (per-mode state is kept for each).
        max_shots: Shots of one job.
        max_ff_bits: Register bits the feed-forward of one phase may read (2**bits branches are planned).
        max_register_bits: Modes one measurement reads into a register (its histogram has 2**bits bins).
        max_result_bins: Histogram bins of all of a circuit's registers together (8 bytes each, per phase).
        max_phases: Phases of one plan (each carries the mesh's m² heater phases); also bounds rounds.
        max_branches: Feed-forward branches of one plan, all phases together.
        max_wait_ns: Nanoseconds one wait may stand for.
        max_name_chars: Characters of a circuit's name.
        max_problems: Problems listed when a circuit is refused (the rest are counted).
        coherence_margin: Fraction of a delay line's window kept unused as a safety margin.
        readout_s_per_shot: Time to fetch one shot's pattern, for duration estimates.
        settle_factor: Heater settling waited, in time constants (5: within 1 %).
    """

    max_ops: int = 1_000_000
    max_modes: int = 1024
    max_shots: int = 100_000_000
    max_ff_bits: int = 10
    max_register_bits: int = 20
    max_result_bins: int = 2**22
    max_phases: int = 1024
    max_branches: int = 2**16
    max_wait_ns: float = 1e9
    max_name_chars: int = 256
    max_problems: int = 100
    coherence_margin: float = 0.1
    readout_s_per_shot: float = 2e-7
    settle_factor: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.coherence_margin < 1:
            raise ValueError(f"limits.coherence_margin must be in [0, 1), got {self.coherence_margin}")
        for name in Limits.__struct_fields__:
            if name.startswith("max_") and not getattr(self, name) >= 1:
                raise ValueError(f"limits.{name} must be at least 1, got {getattr(self, name)}")
        # A plan the protocol would refuse to carry must be refused as a circuit instead.
        for name, value, most, what in (
            ("max_ff_bits", 2**self.max_ff_bits, MAX_RULES, "feed-forward branches in a phase"),
            ("max_phases", self.max_phases, MAX_PHASES, "phases in a plan"),
            ("max_ops", self.max_ops, MAX_PLAN_OPS, "operations in a phase"),
        ):
            if value > most:
                raise ValueError(f"limits.{name} allows plans the protocol cannot carry: at most {most:,} {what}")


@dataclass(frozen=True)
class Health:
    """Components calibration or the executor found degraded: the compiler places nothing on them."""

    modes: frozenset[int] = frozenset()
    detectors: frozenset[int] = frozenset()
    delay_lines: frozenset[int] = frozenset()

    def key(self) -> str:
        """What of the health changes a plan: part of the plan cache's key (`device_key`)."""
        return f"m{sorted(self.modes)}d{sorted(self.detectors)}l{sorted(self.delay_lines)}"
