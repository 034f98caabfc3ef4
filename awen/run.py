"""``awen run CIRCUIT.json``: a circuit's whole job path, from the circuit to its results, in one command.

On the lab a client finds (``--connect``, ``$AWEN_CONNECT``, or an ``awen up``
holding the data directory) if there is one; else it starts the default lab
in its own process tree (memory, HAL with a simulated chip, scheduler,
executor, calibration and the door: one supervisor, each actor its own
process, data in the data directory, held as ``awen up`` holds it). Either
way it submits through the client (`awen.client`), calibrates the chip if it
has no valid calibration, runs the circuit with a progress bar on a
terminal, and prints the counts of every register and the figures the
circuit declares (``analysis``: HOM visibility, fidelity, delay-line
transmission; `protocol.analysis`), on its own simulated chip each next to
what the simulator's parameters predict.
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

from actors.lab import LAB_ACTORS, lab_system
from actors.scheduler import Limits, analyse
from protocol import AwenError, analysis
from protocol.circuit import Circuit, CircuitError, HomVisibility, Transmission, load_circuit
from protocol.paths import default_data_dir, ipc_endpoint
from protocol.results import joint_slot, result_slot
from protocol.sources import hom_visibility
from runtime import RuntimeOptions, Supervisor, SystemConfig, open_system
from sim import chip_of, parse_config, write_factory_calibration

from .client import AsyncLab, JobFailed, open_lab
from .daemon import DaemonLock, daemon_file_is_stale, read_daemon_file

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


def system_config(
    data_dir: Path, modes: int, seed: int, factory: Path, verbose: bool, *, door: list[str] | None = None
) -> SystemConfig:
    """The standard lab on a simulated chip in the HAL's process, as ``awen run`` and ``awen calibrate`` start it."""
    return lab_system(
        door=door,
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


async def _follow(source: Any, display: Display, label: str, job_prefix: str, done: trio.Event) -> None:
    # A supervisor's event stream inside the mesh, or a client's (`AsyncLab.events`) through the door.
    stream = getattr(source, "open_event_stream", None) or source.events
    async with stream("exec.progress") as events:
        async for event in events:
            if done.is_set():
                return
            body = event.body
            if body.job.startswith(job_prefix):
                display.bar(label, body.shots_done, body.shots_total, body.eta_s)


async def _with_progress(source: Any, display: Display, label: str, job_prefix: str, work: Any) -> Any:
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_follow, source, display, label, job_prefix, done)
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
    circuit: Circuit,
    *,
    data_dir: Path,
    modes: int,
    seed: int,
    display: Display,
    verbose: bool,
    connect: str | None = None,
) -> dict[str, Any]:
    """Run ``circuit`` on the lab a client finds (``connect``, ``$AWEN_CONNECT``, ``data_dir``'s daemon), else
    on the default lab started here, in this process tree, on ``data_dir``; the report `print_report` prints.

    Either way it goes through the client (`awen.client`), as any script's would.
    """
    found = connect or os.environ.get("AWEN_CONNECT") or _running_daemon(data_dir)
    if found:
        display.say(f"awen: using the running lab at {found}")
        async with open_lab(found, client="awen-run") as lab:
            return await _run_on(lab, circuit, display, predict=None)
    sim_config = parse_config({"modes": modes})
    with DaemonLock(data_dir):
        factory = prepare(data_dir, sim_config, seed)
        endpoint = ipc_endpoint(data_dir)
        config = system_config(data_dir, modes, seed, factory, verbose, door=[endpoint])
        display.say(
            f"awen: starting memory, hal (simulated {modes}-mode chip, seed {seed}), scheduler, executor, "
            f"calibration and the door; data in {data_dir}"
        )
        async with open_system(config) as sup:
            await wait_started(sup)
            async with open_lab(endpoint, client="awen-run") as lab:
                return await _run_on(lab, circuit, display, predict=(sim_config, seed))


def _running_daemon(data_dir: Path) -> str | None:
    """The ipc endpoint of a daemon holding ``data_dir``, if one does."""
    info = read_daemon_file(data_dir)
    if info is None or daemon_file_is_stale(data_dir):
        return None
    endpoints = [str(e) for e in info.get("endpoints", [])]
    return next((e for e in endpoints if e.startswith("ipc://")), endpoints[0] if endpoints else None)


async def _run_on(lab: AsyncLab, circuit: Circuit, display: Display, predict: tuple[Any, int] | None) -> dict[str, Any]:
    status = await lab.calibration_status()
    if not status.valid:
        display.say("awen: the chip has no valid calibration: calibrating (heater sweeps with coherent light)")
        with trio.fail_after(RUN_TIMEOUT_S):
            cal = await _with_progress(lab, display, "calibrating", "cal-", lab.calibrate)
        display.say(
            f"awen: calibration version {cal.version}: {cal.heaters_fitted} heaters fitted, phi0 within "
            f"{cal.phi0_sigma_max:.1e} rad, residual {cal.residual_rms:.1e}, {cal.seconds:.1f} s"
        )
        for line in source_lines((await lab.calibration(cal.version)).data):
            display.say(f"awen:   {line}")
    else:
        display.say(f"awen: using calibration version {status.version} ({status.age_s or 0:.0f} s old)")
    job = await lab.submit(circuit)
    display.say(f"awen: job {job.id} accepted: {circuit.shots} shots")
    began = time.monotonic()
    with trio.fail_after(RUN_TIMEOUT_S):
        try:
            result = await _with_progress(lab, display, "running", job.id, job.wait)
        except JobFailed as exc:
            result = exc.result()
    seconds = time.monotonic() - began
    body = result.body
    counts: dict[str, np.ndarray] = {result_slot(r.phase, r.name): np.asarray(r.counts) for r in body.registers}
    counts |= {joint_slot(j.phase): np.asarray(j.counts) for j in body.joint}
    plan = await lab.plan(body.plan) if body.plan is not None else None
    if predict is not None and plan is not None:
        figures_found = figures(circuit, plan, counts, *predict)
    else:
        figures_found = dict(body.figures)
    if plan is not None and result.calibration is not None:
        calibration = await lab.calibration(result.calibration)
        analysis.calibration_predictions(circuit, plan, counts, figures_found, calibration.version, calibration.data)
    return {
        "job": job.id,
        "state": result.state,
        "reason": result.reason,
        "calibration": result.calibration,
        "plan": result.plan,
        "shots": circuit.shots,
        "seconds": seconds,
        "registers": {name: {"modes": result.modes(name), "counts": result.counts(name)} for name in result.registers},
        "joint": {" ".join(j.registers): {"bits": list(j.bits), "counts": np.asarray(j.counts)} for j in body.joint},
        "figures": figures_found,
    }


def source_lines(data: Any) -> list[str]:
    """One line per source a calibration measured (decision 0017 §5): g2, M, clicks per pulse."""

    def sigma(value: float) -> str:
        return f"{value:.4f}" if value >= 0 else "?"

    return [
        f"source on input {f.mode}: g2 {f.g2:.4f} +- {sigma(f.g2_sigma)}, indistinguishability "
        f"{f.indistinguishability:.3f} +- {sigma(f.indistinguishability_sigma)}, {f.efficiency:.3f} clicks per pulse"
        for f in data.sources
    ]


def _detection(sim_config: Any, seed: int) -> np.ndarray:
    """Each output's chance to register a photon that entered the chip: the simulator's parameters."""
    chip = chip_of(sim_config, seed)
    d = sim_config.detectors
    in_gate = math.erf(d.gate_s / (2 * math.sqrt(2) * d.jitter_s)) if d.jitter_s else 1.0  # decision 0017 §3
    result: np.ndarray = (
        chip.input_transmission * chip.mesh_transmission * chip.output_transmission * chip.efficiency * in_gate
    )
    return result


def _hom_expected(plan: Any, counts: dict[str, np.ndarray], figure: HomVisibility, sim_config: Any, seed: int) -> float:
    """The visibility the chip's sources give (decision 0017): exact coincidences behind a balanced
    coupler and without one, on the register's two outputs with their detection, the two sources
    the phase feeds."""
    found = analysis.register_counts(plan, counts, figure.register)
    if found is None:
        return 1.0
    read, phase, _ = found
    columns = [c % plan.modes for c in read.columns][:2]
    fed = [i.mode for i in phase.inputs if i.state == "photon"][:2]
    if len(columns) < 2 or len(fed) < 2:
        return 1.0
    eta = _detection(sim_config, seed)[columns]
    dark = 1.0 - np.exp(-chip_of(sim_config, seed).dark_rate[columns] * sim_config.detectors.gate_s)
    chip = chip_of(sim_config, seed)
    return hom_visibility([chip.source(mode, 0.0) for mode in fed], efficiency=eta, dark=dark)


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
            result["expected"] = _hom_expected(plan, counts, figure, sim_config, seed)
        elif isinstance(figure, Transmission) and result["rounds"] is not None:
            found = analysis.register_counts(plan, counts, figure.register)
            column = found[0].columns[0] % plan.modes if found is not None else 0
            fed = [i.mode for i in found[1].inputs if i.state == "photon"] if found is not None else []
            t = (
                _detection(sim_config, seed)[column]
                * sim_config.delay_line_transmission ** result["rounds"]
                * chip.mesh_transmission
            )
            # The register clicks when one of the source's photons survives: p1 t + p2 (1 - (1 - t)^2).
            _, p1, p2 = chip.source(fed[0], 0.0).emission() if fed else (0.0, 1.0, 0.0)
            result["expected"] = p1 * t + p2 * (1 - (1 - t) ** 2)
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
        predictions = []
        if figure.get("calibrated") is not None:
            predictions.append(
                f"calibration version {figure['calibration_version']}'s sources predict "
                f"{_value_text(figure['calibrated'], figure['calibrated_sigma'])}"
                f"{_agreement(figure['value'], figure.get('sigma'), figure['calibrated'], figure['calibrated_sigma'])}"
            )
        if figure.get("expected") is not None:
            predictions.append(f"the simulator's parameters predict {figure['expected']:.4f}")
        if predictions:
            text += f" ({'; '.join(predictions)})"
        print(f"  {name} ({figure['figure']}): {text}", file=stream)
        for key, value in figure.items():
            if key not in PRINTED and value is not None:
                print(f"    {key}: {value}", file=stream)


PRINTED = ("figure", "value", "sigma", "expected", "calibrated", "calibrated_sigma", "calibration_version")
"""A figure's keys `print_report` shows on its first line."""


def _agreement(value: float, sigma: float | None, predicted: float, predicted_sigma: float) -> str:
    """``, within 1.2 sigma`` (or ``, 3.4 sigma apart``): the measurement against a prediction."""
    combined = math.hypot(sigma or 0.0, predicted_sigma)
    if combined == 0:
        return ""
    apart = abs(value - predicted) / combined
    return f", within {apart:.1f} sigma" if apart <= 2 else f", {apart:.1f} sigma apart"


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
    data_dir = Path(args.data_dir or default_data_dir()).absolute()
    try:
        report = trio.run(
            lambda: run_circuit(
                circuit,
                data_dir=data_dir,
                modes=args.modes,
                seed=args.seed,
                display=display,
                verbose=args.verbose,
                connect=getattr(args, "connect", None),
            )
        )
    except AwenError as exc:
        display.clear()
        print(f"awen: error: {exc}", file=sys.stderr)
        return 1
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
