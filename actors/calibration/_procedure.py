"""Plans the calibration actor makes itself (procedures), not compiled from a circuit."""

from __future__ import annotations

from protocol.hal import InputSetting
from protocol.photonica import DeviceDescription
from protocol.plan import Phase, Placement, Plan, PlanMetrics, RegisterRead, Resources
from protocol.results import procedure_plan_id


def procedure_plan(
    job: str, description: DeviceDescription, phases: list[Phase], *, device: str, reconfigurations: int
) -> Plan:
    """A plan an actor made itself (not compiled from a circuit), named after its job."""
    metrics = PlanMetrics(
        total_duration_s=sum(p.duration_s for p in phases),
        phases=len(phases),
        ops=0,
        min_slack_ns=None,
        compile_s=0.0,
        reconfigurations=reconfigurations,
    )
    return Plan(
        id=procedure_plan_id(job),
        circuit="",
        device=device,
        identity=description.identity.idn(),
        calibration=None,
        strategy="procedure",
        kind="procedure",
        modes=description.modes,
        phases=phases,
        metrics=metrics,
    )


def procedure_phase(
    description: DeviceDescription,
    index: int,
    *,
    volts: list[float],
    inputs: list[InputSetting],
    resources: Resources,
    registers: list[RegisterRead] | None = None,
    shots: int = 1,
) -> Phase:
    """One phase of a procedure: explicit voltages and inputs, every mode in place, settled at length.

    With ``registers`` it fires ``shots`` shots and reads them; without, it reads the photodiodes.
    """
    m = description.modes
    settle = 5 * description.heaters.settle_s
    return Phase(
        index=index,
        round=0,
        ops=[],
        depends_on=[],
        mesh_phases=[],
        volts=volts,
        readout="shots" if registers else "powers",
        inputs=inputs,
        delay_lines=[],
        ff_modes=[],
        branches=[],
        registers=registers or [],
        placement=[Placement(logical=q, physical=q, pass_=1) for q in range(m)],
        resources=resources,
        shots=shots,
        width=m,
        settle_s=settle,
        duration_s=settle + (shots / description.shot_rate_hz if registers else 1e-3),
        deadlines=[],
    )
