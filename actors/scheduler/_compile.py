"""From a circuit to an execution plan: analyse, build the phases, measure the plan, name it.

The steps, each a module of its own:

1. `_analyse`: one pass over the operations; every problem against the
   device and the limits; the dependency graph; the components (`_components`)
   packed into phases (`_pack`).
2. `_assemble`: each phase placed on the chip, its unitary (`_unitary`), its
   delay-line routes and deadlines, its registers and feed-forward branches
   (`_branches`).
3. Here: the plan's metrics and its id, the key of the plan cache (and of the
   stored plans a restarted scheduler finds again).
"""

from __future__ import annotations

import hashlib
import time

import msgspec

from protocol.circuit import Circuit, CircuitError, circuit_hash
from protocol.photonica import DeviceDescription
from protocol.plan import Phase, Plan, PlanMetrics

from ._analyse import Analysis, analyse
from ._assemble import build_phases
from ._limits import Health, Limits


def plan_id(circuit_digest: str, device_key: str, calibration: int | None, strategy: str) -> str:
    """A plan's id: what it was made from. The plan cache and the store are keyed by it; do not change it."""
    body = f"{circuit_digest}|{device_key}|{calibration}|{strategy}".encode()
    return "plan-" + hashlib.blake2b(body, digest_size=12).hexdigest()


def device_key(device: DeviceDescription, health: Health) -> str:
    """The device as a plan depends on it: its description and what of it is degraded."""
    digest = hashlib.blake2b(msgspec.json.encode(device), digest_size=12).hexdigest()
    return f"{digest}:{health.key()}"


def compile_circuit(
    circuit: Circuit,
    device: DeviceDescription,
    *,
    device_name: str = "",
    calibration: int | None = None,
    limits: Limits | None = None,
    health: Health | None = None,
    strategy: str = "static",
) -> Plan:
    """The plan for a circuit on a device; `CircuitError` listing every problem if there is one."""
    began = time.perf_counter()
    limits = limits or Limits()
    health = health or Health()
    analysis = analyse(circuit, device, limits, health)
    if analysis.problems:
        raise CircuitError(analysis.problems)
    phases = build_phases(analysis, circuit, device, limits, health)
    metrics = _metrics(phases, analysis, began)
    digest = circuit_hash(circuit)
    return Plan(
        id=plan_id(digest, device_key(device, health), calibration, strategy),
        circuit=digest,
        device=device_name,
        identity=device.identity.idn(),
        calibration=calibration,
        strategy=strategy,
        modes=device.modes,
        phases=phases,
        metrics=metrics,
    )


def _metrics(phases: list[Phase], analysis: Analysis, began: float) -> PlanMetrics:
    """Expected duration, size, distinct configurations, least slack before a deadline, time taken."""
    has_deadlines = any(p.deadlines for p in phases)
    configurations = {tuple(p.mesh_phases) for p in phases}
    return PlanMetrics(
        total_duration_s=sum(p.duration_s for p in phases),
        phases=len(phases),
        ops=sum(len(p.ops) for p in phases),
        min_slack_ns=analysis.slack_ns if has_deadlines else None,
        compile_s=time.perf_counter() - began,
        reconfigurations=len(configurations),
    )
