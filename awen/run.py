"""``awen run CIRCUIT.json``: the whole job path on a simulated chip, from a circuit to its results.

Starts the embedded stack (memory, HAL with a simulated device, scheduler,
executor, calibration: one supervisor, each actor its own process, data in a
local directory), calibrates the chip if it has no valid calibration, runs
the circuit with a progress bar on a terminal, and prints the counts of every
register and the figures the circuit declares (``analysis``: HOM visibility,
fidelity, delay-line transmission; `protocol.analysis`), each next to what the
simulator's parameters predict.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import trio

from actors.jobs import wait_for_job
from actors.lab import LAB_ACTORS, lab_system
from actors.scheduler import Limits, analyse
from protocol import AwenError, analysis
from protocol.calibration import Calibrate, GetCalibrationStatus
from protocol.circuit import Circuit, CircuitError, HomVisibility, Transmission, load_circuit
from protocol.memory import GetPlan, QueryResults
from protocol.results import joint_slot, result_slot
from protocol.scheduler import Submit
from runtime import RuntimeOptions, Supervisor, SystemConfig, open_system
from sim import chip_of, parse_config, write_factory_calibration

RUN_TIMEOUT_S = 3600.0


class Display:
    """A progress bar on a terminal; one line per stage otherwise (CI logs)."""

    def __init__(self, stream: Any, quiet: bool) -> None:
        self.stream = stream
        self.tty = stream.isatty() and not quiet
        self.quiet = quiet
        self._last = ""

    def say(self, text: str) -> None:
        if self.quiet:
            return
        self.clear()
        print(text, file=self.stream, flush=True)

    def bar(self, label: str, done: int, total: int, eta: float) -> None:
        if not self.tty or total <= 0:
            return
        width = 30
        filled = int(width * min(1.0, done / total))
        eta_text = f"{eta:5.1f} s left" if math.isfinite(eta) else ""
        line = f"\r{label:<14} [{'#' * filled}{'.' * (width - filled)}] {100 * done / total:5.1f}%  {eta_text}"
        self._last = line
        self.stream.write(line)
        self.stream.flush()

    def clear(self) -> None:
        if self._last:
            self.stream.write("\r" + " " * len(self._last) + "\r")
            self._last = ""


def system_config(data_dir: Path, modes: int, seed: int, factory: Path, verbose: bool) -> SystemConfig:
    """The standard lab on a simulated chip in the HAL's process, as ``awen run`` and ``awen calibrate`` start it."""
    return lab_system(
        data_dir=data_dir,
        device_url=f"sim://?seed={seed}&modes={modes}",
        factory_calibration=factory,
        log_level="info" if verbose else "warning",
        runtime=RuntimeOptions(heartbeat_interval=0.5, request_timeout=60.0),
    )


async def wait_started(sup: Supervisor) -> None:
    """Until every actor of the lab has started and its heartbeat reached the supervisor."""
    with trio.fail_after(120):
        await sup.wait_started()
        for name in LAB_ACTORS:
            await sup.wait_peer(name)


async def _follow(sup: Supervisor, display: Display, label: str, job_prefix: str, done: trio.Event) -> None:
    async with sup.open_event_stream("exec.progress") as events:
        async for event in events:
            if done.is_set():
                return
            body = event.body
            if body.job.startswith(job_prefix):
                display.bar(label, body.shots_done, body.shots_total, body.eta_s)


async def _with_progress(sup: Supervisor, display: Display, label: str, job_prefix: str, work: Any) -> Any:
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_follow, sup, display, label, job_prefix, done)
        try:
            return await work()
        finally:
            done.set()
            display.clear()
            nursery.cancel_scope.cancel()


def prepare(data_dir: Path, sim_config: Any, seed: int) -> Path:
    """The data directory, and in it the simulated chip's factory calibration (what its maker would ship)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    factory = data_dir / f"factory-calibration-seed{seed}-{sim_config.modes}modes.json"
    write_factory_calibration(factory, sim_config, seed)
    return factory


async def run_circuit(
    circuit: Circuit, *, data_dir: Path, modes: int, seed: int, display: Display, verbose: bool
) -> dict[str, Any]:
    sim_config = parse_config({"modes": modes})
    factory = prepare(data_dir, sim_config, seed)
    config = system_config(data_dir, modes, seed, factory, verbose)
    display.say(
        f"awen: starting memory, hal (simulated {modes}-mode chip, seed {seed}), scheduler, executor, "
        f"calibration; data in {data_dir}"
    )
    async with open_system(config) as sup:
        await wait_started(sup)
        status = await sup.request("calibration", GetCalibrationStatus())
        if not status.valid:
            display.say("awen: the chip has no valid calibration: calibrating (heater sweeps with coherent light)")
            with trio.fail_after(RUN_TIMEOUT_S):
                cal = await _with_progress(
                    sup, display, "calibrating", "cal-", lambda: sup.request("calibration", Calibrate())
                )
            display.say(
                f"awen: calibration version {cal.version}: {cal.heaters_fitted} heaters fitted, phi0 within "
                f"{cal.phi0_sigma_max:.1e} rad, residual {cal.residual_rms:.1e}, {cal.seconds:.1f} s"
            )
        else:
            display.say(f"awen: using calibration version {status.version} ({status.age_s:.0f} s old)")
        accepted = await sup.request("scheduler", Submit(circuit=circuit))
        job = accepted.job
        display.say(f"awen: job {job} accepted: {circuit.shots} shots")
        began = time.monotonic()
        with trio.fail_after(RUN_TIMEOUT_S):
            record = await _with_progress(sup, display, "running", job, lambda: wait_for_job(sup, job))
        seconds = time.monotonic() - began
        plan = (await sup.request("memory", GetPlan(plan=str(record.plan)))).body
        results = (await sup.request("memory", QueryResults(job=job))).results
    counts: dict[str, np.ndarray] = {}
    for r in results:
        counts[r.slot] = counts.get(r.slot, 0) + np.asarray(r.value)
    registers = {}
    joint = {}
    for phase in plan.phases:
        for reg in phase.registers:
            total = counts.get(result_slot(phase.index, reg.name))
            if total is not None:
                registers[reg.name] = {"modes": reg.modes, "counts": total}
        together = counts.get(joint_slot(phase.index))
        if together is not None:
            joint[" ".join(r.name for r in phase.registers)] = {
                "bits": [len(r.columns) for r in phase.registers],
                "counts": together,
            }
    return {
        "job": job,
        "state": record.state,
        "reason": record.reason,
        "calibration": record.calibration,
        "plan": record.plan,
        "shots": circuit.shots,
        "seconds": seconds,
        "registers": registers,
        "joint": joint,
        "figures": figures(circuit, plan, counts, sim_config, seed),
    }


def _detection(sim_config: Any, seed: int) -> np.ndarray:
    """Each output's chance to register a photon that entered the chip: the simulator's parameters."""
    chip = chip_of(sim_config, seed)
    result: np.ndarray = chip.input_transmission * chip.mesh_transmission * chip.output_transmission * chip.efficiency
    return result


def figures(
    circuit: Circuit, plan: Any, counts: dict[str, np.ndarray], sim_config: Any, seed: int
) -> dict[str, dict[str, Any]]:
    """The circuit's declared figures (`protocol.analysis`), each with what the simulator's parameters predict."""
    chip = chip_of(sim_config, seed)
    measured = analysis.figures(circuit, plan, counts, efficiency=_detection(sim_config, seed))
    for figure in circuit.analysis:
        result = measured.get(figure.label())
        if result is None:
            continue
        if isinstance(figure, HomVisibility):
            result["expected"] = 1.0
        elif isinstance(figure, Transmission) and result["rounds"] is not None:
            found = analysis.register_counts(plan, counts, figure.register)
            column = found[0].columns[0] % plan.modes if found is not None else 0
            result["expected"] = (
                chip.input_transmission
                * chip.mesh_transmission
                * sim_config.delay_line_transmission ** result["rounds"]
                * chip.mesh_transmission
                * chip.output_transmission[column]
                * chip.efficiency[column]
            )
    return measured


def print_report(report: dict[str, Any], stream: Any) -> None:
    print(
        f"job {report['job']}: {report['state']}{' (' + report['reason'] + ')' if report['reason'] else ''}",
        file=stream,
    )
    print(
        f"  calibration version {report['calibration']}, plan {report['plan']}, {report['shots']} shots "
        f"in {report['seconds']:.1f} s",
        file=stream,
    )
    for name, reg in report["registers"].items():
        counts = reg["counts"]
        bits = len(reg["modes"])
        total = int(counts.sum())
        print(f"  register {name} (modes {reg['modes']}): {total} shots", file=stream)
        order = np.argsort(-counts, kind="stable")[:16]
        for value in order:
            if counts[value] == 0:
                break
            print(
                f"    {format(int(value), f'0{bits}b')}  {int(counts[value]):>8}  {counts[value] / total:7.4f}",
                file=stream,
            )
    for names, together in report.get("joint", {}).items():
        bits = sum(together["bits"])
        counts = together["counts"]
        print(f"  registers {names} together:", file=stream)
        for value in np.argsort(-counts, kind="stable")[:16]:
            if counts[value] == 0:
                break
            print(f"    {format(int(value), f'0{bits}b')}  {int(counts[value]):>8}", file=stream)
    for name, figure in report["figures"].items():
        text = _value_text(figure["value"], figure.get("sigma"))
        if figure.get("expected") is not None:
            text += f" (the simulator's parameters predict {figure['expected']:.4f})"
        print(f"  {name} ({figure['figure']}): {text}", file=stream)
        for key, value in figure.items():
            if key not in ("figure", "value", "sigma", "expected") and value is not None:
                print(f"    {key}: {value}", file=stream)


def _value_text(value: Any, sigma: Any) -> str:
    """``0.1234 +- 0.0012``; a list of them (one per condition) in brackets."""
    if isinstance(value, list):
        sigmas = sigma if isinstance(sigma, list) else [None] * len(value)
        return "[" + ", ".join(_value_text(v, s) for v, s in zip(value, sigmas, strict=True)) + "]"
    if value is None:
        return "no shots"
    return f"{value:.4f}" + (f" +- {sigma:.4f}" if sigma is not None else "")


def main(args: Any) -> int:
    try:
        circuit = load_circuit(Path(args.circuit).read_bytes())
    except OSError as exc:
        print(f"awen: error: cannot read {args.circuit}: {exc.strerror}", file=sys.stderr)
        return 1
    except AwenError as exc:
        print(f"awen: error: {args.circuit}: {exc}", file=sys.stderr)
        return 1
    if args.shots is not None:
        circuit = msgspec.structs.replace(circuit, shots=args.shots)
    checked = analyse(circuit, parse_config({"modes": args.modes}).description(), Limits())
    if checked.problems:  # said before anything starts, the way the scheduler would say it
        print(f"awen: error: {args.circuit}: {CircuitError(checked.problems)}", file=sys.stderr)
        return 1
    display = Display(sys.stderr, quiet=args.json)
    data_dir = Path(args.data_dir or os.environ.get("AWEN_DATA_DIR", "awen-data")).absolute()
    report = trio.run(
        lambda: run_circuit(
            circuit, data_dir=data_dir, modes=args.modes, seed=args.seed, display=display, verbose=args.verbose
        )
    )
    if args.json:
        print(json.dumps(report, default=_jsonable, indent=1))
    else:
        print_report(report, sys.stdout)
    return 0 if report["state"] == "completed" else 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
