"""The calibration actor: measures the chip through the job queue and versions every fit.

A calibration is a *procedure*: a plan of phases that each set explicit heater
voltages and read the photodiodes with coherent light on every input (two
input phase patterns, every MZI heater swept over ``points`` voltages evenly
spaced in V**2, the others at 0 V). It goes to the scheduler
(``sched.submit_procedure``) with a high priority, so it runs between user
jobs, never across one; the executor stores the readings like any results.
The fit (`fit_sweeps`) starts from the latest calibration, or from the
chip's factory calibration file, and is stored by the memory actor as a new
version with its uncertainties and residuals.

Configured in the system file::

    [[actor]]
    name = "calibration"
    factory = "actors.calibration:CalibrationActor"
    config = { device = "chip", factory = "/etc/awen/chip-factory.json" }
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from typing import Any

import msgspec
import numpy as np
import trio

from actors.jobs import wait_for_job
from protocol import AwenError, Envelope, ErrorCode, convert_settings
from protocol.calibration import (
    Calibrate,
    Calibrated,
    CalibrationDone,
    CalibrationFailed,
    CalibrationStarted,
    CalibrationStatus,
    CheckReference,
    GetCalibrationStatus,
    ReferenceChecked,
    ReferenceResult,
)
from protocol.calibration_model import (
    CalibrationData,
    CalibrationModel,
    FactoryCalibration,
    FitResiduals,
    FitUncertainties,
    HomFit,
    SourceFit,
)
from protocol.circuit import Circuit, CircuitBuilder
from protocol.hal import Describe, Description, InputSetting
from protocol.memory import Calibration, GetCalibration, GetPlan, JobRecord, PutCalibration, QueryJobs, QueryResults
from protocol.mesh import clements, clements_layout, embed_phases
from protocol.photonica import DeviceDescription
from protocol.plan import Phase, Plan, RegisterRead, Resources
from protocol.results import parse_result_slot, powers_by_phase, result_slot
from protocol.scheduler import ReportHealth, Submit, SubmitProcedure
from runtime import Actor, RemoteError, Runtime, handles

from ._fit import FitFailed, FitResult, SweepData, fit_sweeps, refuse_unfound
from ._outcome import Outcome
from ._procedure import procedure_phase, procedure_plan
from ._sources import Histogram, SourceCheck, fit_sources, source_pairs, source_plan, visibility

log = logging.getLogger("awen.calibration")


class CalibrationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The calibration actor's ``config`` table.

    Attributes:
        device: The device, as the HAL names it.
        scheduler, memory, hal: The actors it works through.
        factory: The chip's factory calibration (JSON: ``phi0``, ``alpha``,
            ``crosstalk``), the starting point when no calibration is stored yet.
        points: Voltages per heater in a sweep.
        input_power_w: Coherent power sent into each input during a sweep.
        priority: Queue priority of calibration jobs (above user jobs).
        max_age_s: A calibration older than this is not valid any more.
        auto: Calibrate at start when there is no valid calibration.
        reference_every_s, reference_shots, fidelity_threshold: the drift check:
            a two-photon circuit on a fixed random unitary, run through the
            queue; below the threshold (or past ``max_age_s``) a recalibration
            is queued.
        degraded_scale: outputs this much weaker than the median are reported
            degraded (``sched.report_health``), so that plans avoid them.
    """

    device: str = "chip"
    scheduler: str = "scheduler"
    memory: str = "memory"
    hal: str = "hal"
    factory: str | None = None
    points: int = 10
    input_power_w: float = 1e-4
    priority: int = 1000
    max_age_s: float = 24 * 3600.0
    auto: bool = False
    reference_every_s: float | None = 600.0
    """How often the drift check runs the reference circuit (none: only on request)."""
    reference_shots: int = 20_000
    detector_shots: int = 20_000
    """Shots per detector measurement (dark, and one photon into each mode)."""
    source_shots: int = 100_000
    """Shots per phase of the source measurement (HBT and HOM, decision 0017 §5); 0: not measured."""
    source_brightness: float = 0.6
    """The sources' brightness (their datasheet's): a calibration cannot tell it from the loss after
    them, and the M it finds depends on it slightly (decision 0017 §5). The default is a published
    quantum-dot source's, as the simulated chip's."""
    check_sources: bool = True
    """The drift check also repeats the HOM of inputs 0 and 1 and recalibrates when its visibility
    moved beyond 3 sigma of the calibration's."""
    fidelity_threshold: float = 0.98
    """Below this reference fidelity the chip is recalibrated."""
    degraded_scale: float = 0.5
    """An output transmitting less than this fraction of the median is reported degraded to the scheduler."""
    max_reduced_chi2: float = 10.0
    """A fit whose reduced chi-square ends above this (after its restarts from other starting points) does
    not explain the sweep and is refused, not stored. Fits that found the chip end near 0.1 or under (the
    readings' sigma is generous); local minima in the thousands."""


def input_patterns(modes: int, power_w: float) -> list[list[InputSetting]]:
    """Two fixed patterns of coherent light on every input, with unrelated relative phases."""
    patterns = []
    for seed in (1, 2):
        phases = np.random.default_rng(seed).uniform(0, 2 * math.pi, modes)
        patterns.append(
            [InputSetting(mode=q, state="coherent", power_w=power_w, phase_rad=float(p)) for q, p in enumerate(phases)]
        )
    return patterns


def sweep_plan(
    job: str, description: DeviceDescription, limits_v: list[float], *, points: int, power_w: float, device: str
) -> Plan:
    """The procedure: every MZI heater swept alone, under each input pattern, photodiodes read at each point."""
    m = description.modes
    layout = clements_layout(m)
    n = layout.heater_count
    resources = Resources(modes=list(range(m)), detectors=[], delay_lines=[], ff_shifters=0)
    phases: list[Phase] = []
    for inputs in input_patterns(m, power_w):
        for heater in range(2 * layout.mzi_count):
            top = 0.95 * min(limits_v[heater], description.heaters.v_max[heater])
            for v2 in np.linspace(0.0, top * top, points):
                volts = [0.0] * n
                volts[heater] = float(math.sqrt(v2))
                phases.append(
                    procedure_phase(description, len(phases), volts=volts, inputs=inputs, resources=resources)
                )
    return procedure_plan(job, description, phases, device=device, reconfigurations=len(phases))


def detector_plan(
    job: str, description: DeviceDescription, model: CalibrationModel, *, shots: int, device: str
) -> Plan:
    """Detectors: every input dark (dark counts), then one photon into each mode with the mesh set to the identity.

    With the identity, a photon entering mode j leaves by output j: its click
    rate there is that path's whole detection efficiency (coupling, mesh,
    output and detector).
    """
    m = description.modes
    volts = model.volts_for(embed_phases(clements(np.eye(m)), m)).tolist()
    register = RegisterRead(name="d", columns=list(range(m)), modes=list(range(m)), pass_=1)
    resources = Resources(modes=list(range(m)), detectors=list(range(m)), delay_lines=[], ff_shifters=0)
    setups: list[list[InputSetting]] = [[]] + [[InputSetting(mode=j, state="photon")] for j in range(m)]
    phases = [
        procedure_phase(
            description, i, volts=volts, inputs=inputs, resources=resources, registers=[register], shots=shots
        )
        for i, inputs in enumerate(setups)
    ]
    return procedure_plan(job, description, phases, device=device, reconfigurations=1)


def degraded(detection: np.ndarray, scale: float, shots: int) -> list[int]:
    """Outputs detecting under ``scale`` of the median, by more than 3 standard deviations of their
    counts: too few clicks to tell (a very lossy chip) is not a weak output."""
    median = float(np.median(detection))
    sigma = np.sqrt(np.maximum(detection, median * scale) / max(shots, 1))
    return [int(j) for j in np.flatnonzero((detection < scale * median) & (scale * median - detection > 3 * sigma))]


def clicks_per_detector(counts: np.ndarray, modes: int) -> np.ndarray:
    """Clicks on each detector from a histogram of the register over every mode (first mode most significant)."""
    values = np.arange(len(counts))
    return np.array([counts[(values >> (modes - 1 - j)) & 1 == 1].sum() for j in range(modes)], dtype=np.int64)


def sweep_data(plan: Plan, powers: dict[int, np.ndarray]) -> SweepData:
    """The plan's settings and the readings the executor stored, as arrays for the fit."""
    volts, inputs, readings = [], [], []
    for phase in plan.phases:
        if phase.index not in powers:
            raise FitFailed(f"phase {phase.index} of the sweep has no reading")
        assert phase.volts is not None
        volts.append(phase.volts)
        field = np.zeros(plan.modes, dtype=np.complex128)
        for inp in phase.inputs:
            field[inp.mode] = math.sqrt(inp.power_w) * complex(math.cos(inp.phase_rad), math.sin(inp.phase_rad))
        inputs.append(field)
        readings.append(powers[phase.index])
    return SweepData(np.array(volts), np.array(inputs), np.array(readings))


def reference_unitary(modes: int) -> np.ndarray:
    """A fixed Haar-random unitary (the same for every run): the drift check's circuit."""
    rng = np.random.default_rng(20261122)
    q, r = np.linalg.qr(rng.normal(size=(modes, modes)) + 1j * rng.normal(size=(modes, modes)))
    result: np.ndarray = q * (np.diag(r) / np.abs(np.diag(r)))
    return result


def reference_circuit(modes: int, shots: int, *, priority: int, measured: list[int]) -> Circuit:
    """Photons into modes 0 and 1, the reference unitary on every mode, the ``measured`` modes detected."""
    return (
        CircuitBuilder(modes, shots=shots, priority=priority, name="reference")
        .input(0)
        .input(1)
        .unitary(range(modes), reference_unitary(modes))
        .measure(measured, "ref")
        .build()
    )


def reference_fidelity(
    u: np.ndarray, counts: np.ndarray, efficiency: np.ndarray, measured: list[int], overlap: float = 1.0
) -> tuple[float, int]:
    """Classical fidelity of the measured two-click patterns against the two-photon model; and the events.

    For photons in inputs 0 and 1 that share their wavepacket with probability ``overlap`` (the
    calibrated sqrt(M_0 M_1), decision 0017 §5), outputs a < b click together with probability
    overlap |u[a,0] u[b,1] + u[a,1] u[b,0]|^2 + (1 - overlap)(|u[a,0] u[b,1]|^2 + |u[a,1] u[b,0]|^2)
    times their detection efficiencies; only pairs of ``measured`` outputs (the register's bits, in
    order) count.
    """
    k = len(measured)
    model: dict[int, float] = {}
    for i, a in enumerate(measured):
        for j in range(i + 1, k):
            b = measured[j]
            together = abs(u[a, 0] * u[b, 1] + u[a, 1] * u[b, 0]) ** 2
            apart = abs(u[a, 0] * u[b, 1]) ** 2 + abs(u[a, 1] * u[b, 0]) ** 2
            p = (overlap * together + (1 - overlap) * apart) * efficiency[a] * efficiency[b]
            model[(1 << (k - 1 - i)) | (1 << (k - 1 - j))] = p
    seen = {v: int(counts[v]) for v in model}
    events = sum(seen.values())
    total = sum(model.values())
    if not events or not total:
        return 0.0, events
    fidelity = sum(math.sqrt(seen[v] / events * model[v] / total) for v in model)
    return float(fidelity), events


def reference_overlap(data: CalibrationData) -> float:
    """The chance the reference circuit's two photons (inputs 0 and 1) share their wavepacket,
    sqrt(M_0 M_1), as the calibration measured it; 1 where it could not tell (decision 0017 §5)."""
    fits = {f.mode: f for f in data.sources}
    if 0 not in fits or 1 not in fits:
        return 1.0
    told = all(fits[j].indistinguishability_sigma >= 0 for j in (0, 1))
    together = any(set(h.modes) == {0, 1} and h.visibility_sigma >= 0 for h in data.hom)
    if not told and not together:
        return 1.0
    return math.sqrt(fits[0].indistinguishability * fits[1].indistinguishability)


def load_factory(path: str, heaters: int) -> CalibrationModel:
    try:
        with open(path, "rb") as f:
            fits = msgspec.json.decode(f.read(), type=FactoryCalibration)
    except (OSError, msgspec.DecodeError) as exc:
        raise AwenError(f"cannot read the factory calibration {path}: {exc}", field="factory") from None
    model = CalibrationModel.from_fits(0, fits)
    if model.phi0.size != heaters:
        raise AwenError(f"the factory calibration {path} is for {model.phi0.size} heaters; the device has {heaters}")
    return model


SWEEP_PREFIX = "cal-"
"""Job ids of calibration sweeps: how a restarted calibration actor finds the one it left unfinished."""


class CalibrationActor(Actor):
    """Calibrates one device on request (and at start if ``auto``). Args: `CalibrationConfig` keys."""

    KIND = "calibration"

    def __init__(self, name: str, runtime: Runtime, **config: Any) -> None:
        super().__init__(name, runtime)
        self.config = convert_settings(config, CalibrationConfig, source=f"{name} configuration")
        self._lock = trio.Lock()
        """Held while a calibration runs, or while whether to run one is decided."""
        self._begun = 0
        """Calibrations begun so far (counted with the lock held, as each begins)."""
        self._last: Outcome | None = None
        """The outcome of the calibration begun last: it runs until the outcome is set."""
        self.last_error = ""
        self._starting = self.config.auto
        """Until the start-up check (``auto``) has the lock: reported as calibrating, since it is about to."""
        self._latest_known: tuple[int, float] | None = None
        """The latest calibration's version and when it was made, as last read: for the metrics."""
        device = ("device",)
        self._age = self.metrics.gauge("awen_calibration_age_seconds", "Age of the latest calibration.", device)
        self._version = self.metrics.gauge("awen_calibration_version", "The latest calibration's version.", device)
        self._source_checks = 0
        """Source checks the drift check made: which calibrated pair the next one repeats."""
        self._fidelity = self.metrics.gauge("awen_drift_fidelity", "The last reference check's fidelity.", device)
        self.metrics.on_collect(self._collect)

    async def main(self) -> None:
        for peer in (self.config.memory, self.config.scheduler, self.config.hal):
            await self.wait_peer(peer)
        with contextlib.suppress(AwenError):  # the latest version and its age, for the metrics from the start
            await self._latest()
        async with self._lock:
            try:
                await self._adopt_unfinished_sweep()
            except AwenError as exc:
                log.error("%s: the calibration left unfinished could not be completed: %s", self.name, exc)
        if self.config.auto:
            async with self._lock:  # decided with the lock held: a calibration asked for meanwhile counts
                # cleared only now the lock is held: readiness never sees "not valid, not calibrating" between
                self._starting = False
                status = await self._status()
                if not status.valid:
                    try:
                        await self._calibrate_locked(self.config.points)
                    except AwenError as exc:
                        log.error("%s: calibration at start failed: %s", self.name, exc)
        if self.config.reference_every_s is None:
            await trio.sleep_forever()
        while True:
            await trio.sleep(self.config.reference_every_s)
            if (await self._latest()) is None:
                continue  # nothing to check yet
            try:
                await self.check_reference()
            except AwenError as exc:
                log.error("%s: drift check failed: %s", self.name, exc)

    @handles(CheckReference)
    async def _check_reference(self, msg: CheckReference, env: Envelope) -> ReferenceChecked:
        return await self.check_reference()

    async def check_reference(self) -> ReferenceChecked:
        """Run the reference circuit with the current calibration; recalibrate if it drifted or aged."""
        device = self.config.device
        latest = await self._latest()
        if latest is None:
            raise AwenError(f"{device} has no calibration to check: calibrate first")
        age = time.time() - latest.created
        job = time.strftime("ref-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        modes = (await self.request(self.config.hal, Describe(device=device))).description.modes
        degraded = set(latest.data.degraded_outputs)
        measured = [q for q in range(modes) if q not in degraded]
        circuit = reference_circuit(
            modes, self.config.reference_shots, priority=self.config.priority - 1, measured=measured
        )
        await self.request(self.config.scheduler, Submit(circuit=circuit, job=job))
        record = await self._wait(job)
        if record.state != "completed":
            raise AwenError(f"the reference circuit {job} ended {record.state}: {record.reason}")
        results = (await self.request(self.config.memory, QueryResults(job=job))).results
        reference = result_slot(0, "ref")
        ran_under = {r.calibration for r in results if r.slot == reference}
        if len(ran_under) == 1 and (version := ran_under.pop()) not in (None, latest.version):
            # A newer calibration came while the check waited its turn: it checks the one it ran under.
            latest = await self.request(self.config.memory, GetCalibration(device=device, version=version))
            age = time.time() - latest.created
        counts = np.sum([np.asarray(r.value) for r in results if r.slot == reference], axis=0)
        scales = np.asarray(
            latest.data.detection_efficiency or latest.data.output_scales or np.ones(modes), dtype=np.float64
        )
        fidelity, events = reference_fidelity(
            reference_unitary(modes), counts, scales, measured, reference_overlap(latest.data)
        )
        self._fidelity.set(fidelity, device=device)
        hom = None
        if self.config.check_sources and self.config.source_shots:
            try:
                hom = await self._check_sources(latest, modes)
            except AwenError as exc:  # the fidelity and the age still decide
                log.warning("%s: the sources' check failed: %s", self.name, exc)
        self.publish(
            ReferenceResult(
                device=device, version=latest.version, fidelity=fidelity, threshold=self.config.fidelity_threshold
            )
        )
        reason = ""
        if fidelity < self.config.fidelity_threshold:
            reason = f"reference fidelity {fidelity:.4f} < {self.config.fidelity_threshold}"
        elif hom is not None and hom.moved:
            reason = hom.why
        elif age > self.config.max_age_s:
            reason = f"calibration version {latest.version} is {age:.0f} s old (max_age_s {self.config.max_age_s:g})"
        new_version = None
        if reason:
            # Whether to recalibrate is decided with the lock held, against the latest version then: a
            # calibration stored while the check ran (its fit ends after the check's job began) makes it moot.
            async with self._lock:
                current = await self._latest()
                if current is not None and current.version != latest.version:
                    reason += f"; version {current.version} was stored since, so it was not recalibrated"
                    log.info("%s: %s", self.name, reason)
                else:
                    log.warning("%s: %s: recalibrating %s", self.name, reason, device)
                    new_version = (await self._calibrate_locked(self.config.points)).version
        return ReferenceChecked(
            device=device,
            version=latest.version,
            fidelity=fidelity,
            threshold=self.config.fidelity_threshold,
            events=events,
            job=job,
            recalibrated=new_version is not None,
            new_version=new_version,
            reason=reason,
            visibility=None if hom is None else hom.now,
            visibility_sigma=None if hom is None else hom.now_sigma,
            visibility_calibrated=None if hom is None else hom.calibrated,
            visibility_inputs=[] if hom is None else list(hom.pair),
        )

    async def _check_sources(self, latest: Calibration, modes: int) -> SourceCheck | None:
        """The HOM of one calibrated pair again (dip and reference), against the calibration's: each
        check the next pair the calibration measured, so every source is watched in turn."""
        measured = [h for h in latest.data.hom if h.visibility_sigma >= 0]
        if not measured or modes < 2:
            return None
        calibrated = measured[self._source_checks % len(measured)]
        self._source_checks += 1
        a, b = calibrated.modes
        described = await self.request(self.config.hal, Describe(device=self.config.device))
        job = time.strftime("src-check-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        plan = source_plan(
            job,
            described.description,
            CalibrationModel.from_fits(latest.version, latest.fits),
            [(a, b)],
            shots=self.config.source_shots,
            device=self.config.device,
            kinds=("dip", "reference"),
        )
        phases = await self._procedure(job, plan, "source check (HOM)")
        now, sigma = visibility(phases[0], phases[1])
        return SourceCheck((a, b), now, sigma, calibrated.visibility, calibrated.visibility_sigma)

    async def _latest(self) -> Calibration | None:
        try:
            latest = await self.request(self.config.memory, GetCalibration(device=self.config.device))
        except RemoteError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise
        self._saw(latest.version, latest.created)
        return latest

    def _saw(self, version: int, created: float) -> None:
        if self._latest_known is None or version >= self._latest_known[0]:
            self._latest_known = (version, created)

    def _collect(self) -> None:
        if self._latest_known is not None:
            version, created = self._latest_known
            self._version.set(version, device=self.config.device)
            self._age.set(round(time.time() - created), device=self.config.device)

    async def _status(self) -> CalibrationStatus:
        latest = await self._latest()
        age = None if latest is None else time.time() - latest.created
        return CalibrationStatus(
            device=self.config.device,
            version=None if latest is None else latest.version,
            age_s=age,
            valid=age is not None and age < self.config.max_age_s,
            calibrating=self._lock.locked() or self._starting,
            last_error=self.last_error,
        )

    @handles(GetCalibrationStatus)
    async def _get_status(self, msg: GetCalibrationStatus, env: Envelope) -> CalibrationStatus:
        return await self._status()

    @handles(Calibrate)
    async def _calibrate(self, msg: Calibrate, env: Envelope) -> Calibrated:
        return await self.calibrate(msg.points or self.config.points)

    async def calibrate(self, points: int) -> Calibrated:
        """A new calibration; asked while one runs (or begins while this waits its turn), that one's outcome.

        Idempotent (decision 0014 §4, "Reconnect"): a ``cal.calibrate`` a
        client sends again, or a second client's, while a calibration of the
        device runs is answered with that calibration's version, not queued
        for another sweep after it. Whether one runs is decided and, if none
        does, one is registered with no await in between (`_calibrate_locked`
        registers its `Outcome` as it begins, the lock held). One asked for
        after the last one ended begins anew, with ``points``.
        """
        last = self._last
        if last is not None and not last.done:
            return await last.wait()
        arrived = self._begun
        async with self._lock:
            if self._begun > arrived:
                # One began while this request waited for the lock (a drift check's, or the one at start,
                # decided while the request was on its way): it began after the request came, and answers it.
                assert self._last is not None
                return await self._last.wait()
            return await self._calibrate_locked(points)

    async def _calibrate_locked(self, points: int, *, adopt: tuple[str, Plan] | None = None) -> Calibrated:
        """Run a calibration (`_run`), the lock held; requests that come meanwhile wait for its `Outcome`."""
        assert self._lock.locked()
        outcome = self._last = Outcome()  # registered before any await: from here on a request waits for it
        self._begun += 1
        try:
            result = await self._run(points, adopt=adopt)
        except AwenError as exc:
            self.last_error = exc.message
            self.publish(CalibrationFailed(device=self.config.device, reason=exc.message))
            outcome.fail(exc)
            raise
        except BaseException:
            outcome.fail(AwenError(f"the calibration of {self.config.device} was interrupted; ask again"))
            raise
        outcome.succeed(result)
        return result

    async def _adopt_unfinished_sweep(self) -> None:
        """Finish the calibration a predecessor of this actor started and did not store (it died meanwhile).

        Its sweep is a job in the store, run (or still queued) like any other:
        this actor's state is rebuilt from there. The latest sweep that did
        not end failed or cancelled, and that no stored version came from, is
        waited for, fitted and stored; an older one is left (a newer
        calibration superseded it).
        """
        jobs = (await self.request(self.config.memory, QueryJobs(device=self.config.device, limit=100_000))).jobs
        sweeps = [j for j in jobs if j.job.startswith(SWEEP_PREFIX)]
        if not sweeps or sweeps[-1].state in ("failed", "cancelled"):
            return
        sweep = sweeps[-1]
        latest = await self._latest()
        if latest is not None and latest.data.job == sweep.job:
            return  # stored already
        if latest is not None and latest.created > sweep.submitted:
            return  # superseded by a calibration stored since (by hand, or from elsewhere)
        if sweep.plan is None:
            return
        plan = (await self.request(self.config.memory, GetPlan(plan=sweep.plan))).body
        swept = len(input_patterns(plan.modes, self.config.input_power_w)) * 2 * clements_layout(plan.modes).mzi_count
        points = max(1, len(plan.phases) // swept)  # what sweep_plan made it with
        log.warning("%s: %s was left unfinished (%s): completing it", self.name, sweep.job, sweep.state)
        await self._calibrate_locked(points, adopt=(sweep.job, plan))

    async def _run(self, points: int, *, adopt: tuple[str, Plan] | None = None) -> Calibrated:
        """Calibrate: sweep the heaters (or take the sweep ``adopt`` names, submitted before), fit, store."""
        began = time.monotonic()
        device = self.config.device
        described = await self.request(self.config.hal, Describe(device=device))
        description = described.description
        latest = await self._latest()
        start = self._starting_point(latest, description.heaters.count)
        job, plan = adopt if adopt is not None else await self._submit_sweep(described, points)
        record = await self._wait(job)
        if record.state != "completed":
            raise AwenError(f"the calibration sweep {job} ended {record.state}: {record.reason}")
        results = (await self.request(self.config.memory, QueryResults(job=job))).results
        data = sweep_data(plan, powers_by_phase(results))
        version_hint = (latest.version + 1) if latest is not None else 1
        layout = clements_layout(description.modes)
        limit = self.config.max_reduced_chi2
        fit = await trio.to_thread.run_sync(
            lambda: fit_sweeps(layout, data, start, version=version_hint, chi2_limit=limit)
        )
        refuse_unfound(fit, None if latest is None else latest.version)  # a wrong chip model is never stored
        detection, dark = await self._detectors(description, fit.model)
        weak = degraded(detection, self.config.degraded_scale, self.config.detector_shots)
        sources_job, sources, homs = "", list[SourceFit](), list[HomFit]()
        if self.config.source_shots and description.modes >= 2:
            sources_job, sources, homs = await self._sources(description, fit.model, detection, dark)
            # Clicks per pulse are the source's and the output's together: a dim source is not a weak output.
            relative = {f.mode: f.output_efficiency for f in sources}
            typical = float(np.median(list(relative.values()))) if relative else 0.0
            weak = [j for j in weak if j not in relative or relative[j] < self.config.degraded_scale * typical]
        data_stored = CalibrationData(
            job=job,
            points=points,
            fitted_heaters=fit.fitted.tolist(),
            output_scales=fit.scales.tolist(),
            detection_efficiency=detection.tolist(),
            dark_counts_per_shot=dark.tolist(),
            dark_rate_hz=(dark / description.detectors.gate_s).tolist(),
            degraded_outputs=weak,
            started_from="factory" if latest is None else f"version {latest.version}",
            sources_job=sources_job,
            sources=sources,
            hom=homs,
        )
        note = f"sweep {job}: {len(plan.phases)} readings, {len(fit.fitted)} heaters fitted"
        version = await self._store(description, fit, data_stored, note)
        self._saw(version, time.time())
        await self._report_degraded(weak)
        self.last_error = ""
        self.publish(CalibrationDone(device=device, version=version, residual_rms=fit.residual_rms))
        log.info("%s: %s calibrated: version %d, residual %.2e", self.name, device, version, fit.residual_rms)
        fitted = fit.fitted
        return Calibrated(
            device=device,
            version=version,
            job=job,
            heaters_fitted=len(fitted),
            phi0_sigma_max=float(fit.phi0_sigma[fitted].max()),
            alpha_sigma_max=float((fit.alpha_sigma[fitted] / fit.model.alpha[fitted]).max()),
            residual_rms=fit.residual_rms,
            reduced_chi2=fit.reduced_chi2,
            seconds=time.monotonic() - began,
        )

    def _starting_point(self, latest: Calibration | None, heaters: int) -> CalibrationModel:
        """Where the fit starts: the latest calibration, else the factory's; refused with neither."""
        if latest is not None:
            return CalibrationModel.from_fits(latest.version, latest.fits)
        if self.config.factory is not None:
            return load_factory(self.config.factory, heaters)
        raise AwenError(
            f"{self.config.device} has no calibration yet and no factory calibration is configured (config.factory): "
            "the phase offsets of a mesh cannot be found from output powers without a starting point",
            field="factory",
        )

    async def _submit_sweep(self, described: Description, points: int) -> tuple[str, Plan]:
        """A new sweep of every heater, queued as a procedure: (its job, its plan)."""
        device = self.config.device
        job = time.strftime(f"{SWEEP_PREFIX}%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        plan = sweep_plan(
            job,
            described.description,
            described.limits_v,
            points=points,
            power_w=self.config.input_power_w,
            device=device,
        )
        self.publish(CalibrationStarted(device=device, job=job, phases=len(plan.phases)))
        log.info("%s: calibrating %s: %d phases (job %s)", self.name, device, len(plan.phases), job)
        what = f"calibration of {device}"
        await self.request(
            self.config.scheduler,
            SubmitProcedure(job=job, plan=plan, priority=self.config.priority, description=what),
        )
        return job, plan

    async def _store(self, description: DeviceDescription, fit: FitResult, data: CalibrationData, note: str) -> int:
        """Store the new calibration, with its uncertainties (-1 where the sweep cannot tell); its version."""

        def sigma(values: np.ndarray) -> list[float]:
            sigmas: list[float] = np.where(np.isfinite(values), values, -1.0).tolist()
            return sigmas

        stored = await self.request(
            self.config.memory,
            PutCalibration(
                device=self.config.device,
                identity=description.identity.idn(),
                fits=fit.model.fits(),
                uncertainties=FitUncertainties(
                    phi0=sigma(fit.phi0_sigma), alpha=sigma(fit.alpha_sigma), crosstalk=sigma(fit.crosstalk_sigma)
                ),
                residuals=FitResiduals(rms=fit.residual_rms, reduced_chi2=fit.reduced_chi2, iterations=fit.iterations),
                data=data,
                note=note,
            ),
        )
        version: int = stored.version
        return version

    async def _report_degraded(self, weak: list[int]) -> None:
        """Outputs that transmit far less than the others: the scheduler's plans avoid them from now on."""
        device = self.config.device
        await self.request(self.config.scheduler, ReportHealth(device=device, detectors=weak))
        if weak:
            log.warning(
                "%s: outputs %s of %s transmit under %.0f%% of the median: reported degraded",
                self.name,
                weak,
                device,
                100 * self.config.degraded_scale,
            )

    async def _detectors(self, description: DeviceDescription, model: CalibrationModel) -> tuple[Any, Any]:
        """Each detector's dark counts and its path's detection efficiency, measured with the new fit."""
        job = time.strftime("det-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        shots = self.config.detector_shots
        plan = detector_plan(job, description, model, shots=shots, device=self.config.device)
        totals = {i: c.counts for i, c in (await self._procedure(job, plan, "detector characterisation")).items()}
        m = description.modes
        dark = clicks_per_detector(totals[0], m) / shots
        detection = np.array([clicks_per_detector(totals[1 + j], m)[j] / shots for j in range(m)]) - dark
        return np.clip(detection, 0.0, 1.0), dark

    async def _procedure(self, job: str, plan: Plan, what: str) -> dict[int, Histogram]:
        """Queue a procedure of shots, wait for it, and return each phase's register histogram."""
        await self.request(
            self.config.scheduler,
            SubmitProcedure(job=job, plan=plan, priority=self.config.priority, description=what),
        )
        record = await self._wait(job)
        if record.state != "completed":
            raise AwenError(f"the {what} {job} ended {record.state}: {record.reason}")
        results = (await self.request(self.config.memory, QueryResults(job=job))).results
        totals: dict[int, np.ndarray] = {}
        for r in results:
            slot = parse_result_slot(r.slot)
            if slot is not None and slot.kind == "register":
                totals[slot.phase] = totals.get(slot.phase, 0) + np.asarray(r.value)
        return {index: Histogram(counts, plan.phases[index].shots) for index, counts in totals.items()}

    async def _sources(
        self, description: DeviceDescription, model: CalibrationModel, detection: np.ndarray, dark: np.ndarray
    ) -> tuple[str, list[SourceFit], list[HomFit]]:
        """HBT and HOM through the queue with the new fit, then g2 and M per source (decision 0017 §5)."""
        job = time.strftime("src-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        pairs = source_pairs(description.modes)
        shots = self.config.source_shots
        plan = source_plan(job, description, model, pairs, shots=shots, device=self.config.device)
        phases = await self._procedure(job, plan, "source measurement (HBT and HOM)")
        sources, homs = fit_sources(
            pairs, phases, detection, self.config.detector_shots, dark, brightness=self.config.source_brightness
        )
        for f in sources:
            log.info(
                "%s: source %d: g2 %.4f +- %.4f, M %.4f +- %.4f",
                self.name,
                f.mode,
                f.g2,
                f.g2_sigma,
                f.indistinguishability,
                f.indistinguishability_sigma,
            )
        return job, sources, homs

    async def _wait(self, job: str) -> JobRecord:
        """Until a job this actor submitted (or adopted) has ended in the store."""
        return await wait_for_job(self, job, memory=self.config.memory)
