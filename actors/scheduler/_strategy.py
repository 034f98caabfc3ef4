"""Strategies: static plans as compiled, dynamic ones shaped by what the executor and calibration report.

Static is the compiler's plan: deterministic, circuit order. Dynamic takes
feedback (measured phase durations, failures per component) and (1) routes
around components that fail more often than the configured rate, (2) scales
the duration estimates by what phases really took, and (3) orders phases that
do not depend on each other by the configured objectives and weights. With no
feedback a dynamic plan is the static plan, phase for phase.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from protocol.plan import Phase, Plan
from protocol.scheduler import StrategyConfig

from ._limits import Health

_EWMA = 0.3


@dataclass
class Feedback:
    """What running phases has shown about one device."""

    duration_ratio: float | None = None
    """Measured / expected phase duration, smoothed."""
    attempts: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def empty(self) -> bool:
        return self.duration_ratio is None and not self.failures

    def record(self, phase: Phase, *, ok: bool, duration_s: float | None, failed: list[str]) -> None:
        if duration_s is not None and duration_s > 0 and phase.duration_s > 0:
            ratio = duration_s / phase.duration_s
            self.duration_ratio = (
                ratio if self.duration_ratio is None else ((1 - _EWMA) * self.duration_ratio + _EWMA * ratio)
            )
        for component in _components_of(phase):
            self.attempts[component] += 1
        for component in failed:
            self.failures[component] += 1
        if not ok and not failed:
            for component in _components_of(phase):
                self.failures[component] += 1

    def rate(self, component: str) -> float:
        attempts = self.attempts.get(component, 0)
        return self.failures.get(component, 0) / attempts if attempts else 0.0

    def degraded(self, threshold: float, *, min_attempts: int = 3) -> Health:
        bad = [c for c in self.failures if self.attempts.get(c, 0) >= min_attempts and self.rate(c) > threshold]
        return Health(
            modes=frozenset(int(c.split(":")[1]) for c in bad if c.startswith("mode:")),
            detectors=frozenset(int(c.split(":")[1]) for c in bad if c.startswith("detector:")),
            delay_lines=frozenset(int(c.split(":")[1]) for c in bad if c.startswith("line:")),
        )

    def key(self) -> str:
        """What of the feedback changes a plan: for the plan cache."""
        if self.empty:
            return ""
        ratio = "" if self.duration_ratio is None else f"{self.duration_ratio:.2f}"
        return f"r{ratio}:" + ",".join(sorted(f"{c}={self.rate(c):.2f}" for c in self.failures))


def _components_of(phase: Phase) -> list[str]:
    return (
        [f"mode:{q}" for q in phase.resources.modes]
        + [f"detector:{q % (phase.width // (2 if phase.delay_lines else 1))}" for q in phase.resources.detectors]
        + [f"line:{n}" for n in phase.resources.delay_lines]
    )


def combined_health(reported: Health, strategy: StrategyConfig, feedback: Feedback) -> Health:
    if strategy.kind != "dynamic" or feedback.empty:
        return reported
    learned = feedback.degraded(strategy.degrade_failure_rate)
    return Health(
        modes=reported.modes | learned.modes,
        detectors=reported.detectors | learned.detectors,
        delay_lines=reported.delay_lines | learned.delay_lines,
    )


def apply_strategy(plan: Plan, strategy: StrategyConfig, feedback: Feedback) -> Plan:
    """The plan as the strategy runs it: unchanged when static or without feedback."""
    if strategy.kind != "dynamic" or feedback.empty or not plan.phases:
        return plan
    ratio = feedback.duration_ratio or 1.0
    phases = [msgspec.structs.replace(p, duration_s=p.duration_s * ratio) for p in plan.phases]
    if "fifo" not in strategy.objectives:
        phases = _reorder(phases, strategy, feedback)
    metrics = msgspec.structs.replace(plan.metrics, total_duration_s=sum(p.duration_s for p in phases))
    return msgspec.structs.replace(plan, phases=phases, metrics=metrics, strategy="dynamic")


def _reorder(phases: list[Phase], strategy: StrategyConfig, feedback: Feedback) -> list[Phase]:
    """List scheduling: among phases whose dependencies are done, the best score next; renumbered."""
    w = strategy.weights
    objectives = set(strategy.objectives)
    longest = max(p.duration_s for p in phases) or 1.0
    slacks = [min((d.slack_ns for d in p.deadlines), default=math.inf) for p in phases]
    finite = [s for s in slacks if s != math.inf]
    widest = max(finite, default=1.0) or 1.0
    risk = [max((feedback.rate(c) for c in _components_of(p)), default=0.0) for p in phases]
    remaining = {p.index: set(p.depends_on) for p in phases}
    done: list[int] = []
    previous: tuple[float, ...] | None = None
    while remaining:
        ready = [i for i, deps in remaining.items() if not deps]
        scores = []
        for i in ready:
            p = phases[i]
            score = w.failures * risk[i]
            if "min_duration" in objectives:
                score += w.duration * p.duration_s / longest
            if "max_slack" in objectives:
                score += w.slack * (slacks[i] / widest if slacks[i] != math.inf else 1.0)
            if "min_reconfigurations" in objectives and previous is not None:
                score += w.reconfiguration * (0.0 if tuple(p.mesh_phases) == previous else 1.0)
            scores.append((score, i))
        _, chosen = min(scores)
        done.append(chosen)
        previous = tuple(phases[chosen].mesh_phases)
        del remaining[chosen]
        for deps in remaining.values():
            deps.discard(chosen)
    new_index = {old: new for new, old in enumerate(done)}
    return [
        msgspec.structs.replace(phases[old], index=new, depends_on=sorted(new_index[d] for d in phases[old].depends_on))
        for new, old in enumerate(done)
    ]
