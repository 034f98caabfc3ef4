"""Learning the single-photon sources: HBT and HOM through the queue, fitted (decision 0017 §5).

The procedure takes pairs of inputs: the chain (0, 1), (1, 2), ... and (0, 2), so that
every source's M is determined. For each pair (a, b), four phases with the mesh set by
the current calibration, both outputs a and b read:

1. a's source alone, a balanced coupler between a and b: Hanbury Brown-Twiss for a;
2. b's source alone, the same coupler: HBT for b;
3. both sources, the coupler: the HOM dip;
4. both sources, no coupler: the reference (what `HomVisibility` divides by).

**g2** (HBT): g2 = P(11) / (P(1.) P(.1)) for a source alone behind a balanced coupler, dark
coincidences taken off; the path's efficiency cancels in the ratio. A source's phases are
pooled: g2 = sum C11 / sum N P(1.) P(.1).

**M** (HOM): V = 1 - 2 C(coupler) / C(no coupler), the figure users measure. It depends on
the pair's sources only through sqrt(M_a M_b) (only two photons both in the shared wavepacket
interfere), and linearly, so each pair's overlap is V's place on the line between two exact
evaluations of `hom_visibility` (overlap 0 and 1, with the measured g2 and efficiencies); log M
per source is then a least-squares fit to the pairs' log overlaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec
import numpy as np

from protocol import analysis
from protocol.calibration_model import CalibrationModel, HomFit, SourceFit
from protocol.hal import InputSetting
from protocol.mesh import clements, embed_phases
from protocol.photonica import DeviceDescription
from protocol.plan import Phase, Plan, RegisterRead, Resources
from protocol.sources import BALANCED, hom_visibility

from ._procedure import procedure_phase, procedure_plan

REGISTER = "s"
"""The register every phase reads: the pair's two outputs, a first."""

KINDS = ("hbt-a", "hbt-b", "dip", "reference")
"""The four phases of a pair, in order."""


def source_pairs(modes: int) -> list[tuple[int, int]]:
    """The pairs measured: the chain of neighbours, and (0, 2) so that every M is determined."""
    pairs = [(a, a + 1) for a in range(modes - 1)]
    if modes >= 3:
        pairs.append((0, 2))
    return pairs


def coupler(modes: int, a: int, b: int) -> np.ndarray:
    """A balanced coupler between modes a and b, every other mode straight through."""
    u = np.eye(modes, dtype=np.complex128)
    u[np.ix_([a, b], [a, b])] = BALANCED
    return u


def source_plan(
    job: str,
    description: DeviceDescription,
    model: CalibrationModel,
    pairs: list[tuple[int, int]],
    *,
    shots: int,
    device: str,
    kinds: tuple[str, ...] = KINDS,
) -> Plan:
    """The procedure: for each pair, the phases ``kinds`` names (all four by default), in order."""
    m = description.modes
    identity = model.volts_for(embed_phases(clements(np.eye(m)), m)).tolist()
    phases: list[Phase] = []
    for a, b in pairs:
        mixed = model.volts_for(embed_phases(clements(coupler(m, a, b)), m)).tolist()
        register = RegisterRead(name=REGISTER, columns=[a, b], modes=[a, b], pass_=1)
        resources = Resources(modes=[a, b], detectors=[a, b], delay_lines=[], ff_shifters=0)
        setups = {
            "hbt-a": ([a], mixed),
            "hbt-b": ([b], mixed),
            "dip": ([a, b], mixed),
            "reference": ([a, b], identity),
        }
        for kind in kinds:
            fed, volts = setups[kind]
            inputs = [InputSetting(mode=j, state="photon") for j in fed]
            phases.append(
                procedure_phase(
                    description,
                    len(phases),
                    volts=volts,
                    inputs=inputs,
                    resources=resources,
                    registers=[register],
                    shots=shots,
                )
            )
    return procedure_plan(job, description, phases, device=device, reconfigurations=2 * len(pairs))


@dataclass(frozen=True)
class Histogram:
    """One phase's register histogram and its shots; for a pair (a, b): [neither, b only, a only, both]."""

    counts: np.ndarray
    shots: int

    @property
    def both(self) -> int:
        return int(self.counts[3])

    def light(self, dark_a: float, dark_b: float) -> tuple[float, float, float]:
        """P(a clicks), P(b clicks), P(both click) from the light alone: dark clicks (independent, with
        these chances per shot) taken out exactly, P(no click) = P(no light click) (1 - dark)."""
        c = self.counts / self.shots
        none_a = (c[0] + c[1]) / (1 - dark_a)  # a did not click: neither, or b only
        none_b = (c[0] + c[2]) / (1 - dark_b)
        neither = c[0] / ((1 - dark_a) * (1 - dark_b))
        qa, qb = max(1 - none_a, 0.0), max(1 - none_b, 0.0)
        return qa, qb, max(neither - none_a - none_b + 1, 0.0)


def visibility(dip: Histogram, reference: Histogram) -> tuple[float, float]:
    """1 - 2 C(dip) / C(reference) and its standard deviation, as a circuit's `HomVisibility` is
    computed (`protocol.analysis`); no reference coincidences: (0, inf)."""
    scale = dip.shots / reference.shots  # equal shots in the plan; kept general
    found = analysis.hom_visibility(dip.both, reference.both * scale)
    return (float(found["value"]), float(found["sigma"])) if found is not None else (0.0, math.inf)


@dataclass(frozen=True)
class SourceCheck:
    """The drift check's HOM of one pair against the calibration's (decision 0017 §5)."""

    pair: tuple[int, int]
    now: float
    now_sigma: float
    calibrated: float
    calibrated_sigma: float

    @property
    def moved(self) -> bool:
        """Beyond 3 standard deviations of the two measurements together."""
        sigma = math.hypot(self.now_sigma, max(self.calibrated_sigma, 0.0))
        return math.isfinite(sigma) and abs(self.now - self.calibrated) > 3 * sigma

    @property
    def why(self) -> str:
        a, b = self.pair
        return (
            f"HOM visibility of inputs {a} and {b} is {self.now:.4f} +- {self.now_sigma:.4f}, "
            f"calibrated {self.calibrated:.4f} +- {self.calibrated_sigma:.4f}: the sources drifted beyond 3 sigma"
        )


def _overlap(v: float, sigma_v: float, a: SourceFit, b: SourceFit, dark: tuple[float, float]) -> tuple[float, float]:
    """The pair's sqrt(M_a M_b) that gives visibility ``v``, and its standard deviation: from the
    visibility's, and from each source's g2 (moved by its own, the overlap found again).

    The click probabilities are linear in the chance that both photons share the wavepacket
    (the overlap) and the reference does not depend on it, so V is linear in the overlap:
    two exact evaluations give the line.
    """

    def line(fa: SourceFit, fb: SourceFit) -> tuple[float, float]:
        efficiency = (fa.output_efficiency, fb.output_efficiency)
        transmission = (fa.transmission(), fb.transmission())

        def model(x: float) -> float:
            sources = [fa.model(x), fb.model(x)]
            return hom_visibility(sources, efficiency=efficiency, dark=dark, transmission=transmission)

        return model(0.0), model(1.0)

    v0, v1 = line(a, b)
    if v1 <= v0:
        return 1.0, math.inf  # no interference to see (no photons both ways): M cannot be told
    x = (v - v0) / (v1 - v0)
    variance = (sigma_v / (v1 - v0)) ** 2
    for moved in ((_moved_g2(a), b), (a, _moved_g2(b))):
        w0, w1 = line(*moved)
        if w1 > w0:
            variance += ((v - w0) / (w1 - w0) - x) ** 2
    return min(max(x, 0.0), 1.0), math.sqrt(variance)


def _moved_g2(fit: SourceFit) -> SourceFit:
    return msgspec.structs.replace(fit, g2=fit.g2 + max(fit.g2_sigma, 0.0))


def fit_sources(
    pairs: list[tuple[int, int]],
    phases: dict[int, Histogram],
    efficiency: np.ndarray,
    efficiency_shots: int,
    dark: np.ndarray,
    brightness: float = 1.0,
) -> tuple[list[SourceFit], list[HomFit]]:
    """Every measured source's g2 and M, every pair's visibility, from the procedure's histograms.

    Args:
        pairs: As the plan was made.
        phases: Each phase's histogram, by phase index.
        efficiency: Each output's clicks per pulse from its own source (the detector measurement).
        efficiency_shots: The shots behind each ``efficiency``.
        dark: Each output's dark clicks per shot.
        brightness: The sources' brightness as configured (it cannot be told from the loss after
            them; the M found depends on it slightly, decision 0017 §5).
    """
    coincidences: dict[int, float] = {}  # N P(11) of the light, dark clicks taken out exactly
    expected: dict[int, float] = {}  # N P(1.) P(.1): what the coincidences would be for g2 = 1
    raw: dict[int, int] = {}  # the coincidences counted: their Poisson error is the figure's
    ratios: list[Row] = []  # log(eta_b / eta_a) per pair: the light a balanced coupler sends both ways
    for p, (a, b) in enumerate(pairs):
        da, db = float(dark[a]), float(dark[b])
        towards_a = towards_b = 0.0
        for kind, source in (("hbt-a", a), ("hbt-b", b)):
            counts = phases[4 * p + KINDS.index(kind)]
            qa, qb, q11 = counts.light(da, db)
            coincidences[source] = coincidences.get(source, 0.0) + counts.shots * q11
            expected[source] = expected.get(source, 0.0) + counts.shots * qa * qb
            raw[source] = raw.get(source, 0) + counts.both
            towards_a += qa * counts.shots
            towards_b += qb * counts.shots
        if towards_a > 0 or towards_b > 0:  # light one way only: the other output is dead (half a count)
            a_side, b_side = max(towards_a, 0.5), max(towards_b, 0.5)
            ratios.append(({b: 1.0, a: -1.0}, math.log(b_side / a_side), math.sqrt(1 / a_side + 1 / b_side)))
    measured = sorted(coincidences)
    g2 = {j: _g2(coincidences[j], expected[j], raw[j]) for j in measured}
    eff = {
        j: (float(efficiency[j]), math.sqrt(max(efficiency[j] * (1 - efficiency[j]), 0.0) / efficiency_shots))
        for j in measured
    }
    log_eta = _solve_logs(measured, ratios)
    best = max((v for v, _ in log_eta.values()), default=0.0)
    relative = {j: math.exp(log_eta[j][0] - best) if j in log_eta else 1.0 for j in measured}

    def unfitted(j: int, m: float = 1.0, sigma: float = math.inf) -> SourceFit:
        return SourceFit(
            mode=j,
            efficiency=eff[j][0],
            efficiency_sigma=eff[j][1],
            output_efficiency=relative[j],
            brightness=brightness,
            g2=g2[j][0],
            g2_sigma=g2[j][1],
            indistinguishability=m,
            indistinguishability_sigma=sigma if math.isfinite(sigma) else -1.0,
        )

    homs: list[HomFit] = []
    overlaps: list[Row] = []  # log sqrt(M_a M_b) per pair
    for p, (a, b) in enumerate(pairs):
        dip, reference = phases[4 * p + 2], phases[4 * p + 3]
        v, sigma_v = visibility(dip, reference)
        homs.append(
            HomFit(
                modes=[a, b],
                visibility=v,
                visibility_sigma=sigma_v if math.isfinite(sigma_v) else -1.0,
                coincidences=dip.both + reference.both,
            )
        )
        if math.isfinite(sigma_v):
            x, sigma_x = _overlap(v, sigma_v, unfitted(a), unfitted(b), (float(dark[a]), float(dark[b])))
            if math.isfinite(sigma_x):
                x = max(x, FLOOR)  # log M: an overlap measured at 0 is a very small one
                overlaps.append(({a: 0.5, b: 0.5}, math.log(x), sigma_x / x))
    log_m = _solve_logs(measured, overlaps, undetermined=True)
    fits = []
    for j in measured:
        if j in log_m:
            m = min(math.exp(log_m[j][0]), 1.0)
            fits.append(unfitted(j, m, m * log_m[j][1]))
        else:
            fits.append(unfitted(j))
    return fits, homs


def _g2(coincidences: float, expected: float, counted: int) -> tuple[float, float]:
    """g2 and its standard deviation (Poisson on the ``counted`` coincidences, at least one's worth);
    -1: cannot tell."""
    if expected <= 0:
        return 0.0, -1.0
    return max(coincidences, 0.0) / expected, math.sqrt(max(counted, 1)) / expected


Row = tuple[dict[int, float], float, float]
"""One measured log-quantity: its coefficients on the unknowns (by source), its value, its sigma."""

FLOOR = 1e-4
"""The least overlap taken into the log fit (a pair measured as fully distinguishable)."""


def _solve_logs(unknowns: list[int], rows: list[Row], *, undetermined: bool = False) -> dict[int, tuple[float, float]]:
    """Weighted least squares for log quantities per source: each value and its standard deviation.

    Unknowns no row touches are left out. An underdetermined system gets the least-norm solution:
    equal M across a lone pair; efficiencies up to a common factor, which the caller fixes. With
    ``undetermined``, an unknown the rows do not fix on its own (it is not in their row space: two
    sources measured only together, or a chain with no triangle) gets sigma inf, "cannot tell";
    products the rows do fix (a measured pair's sqrt(M_a M_b)) are still right.
    """
    index = {j: i for i, j in enumerate(unknowns)}
    if not rows:
        return {}
    a = np.zeros((len(rows), len(unknowns)))
    y = np.zeros(len(rows))
    w = np.zeros(len(rows))
    for r, (coefficients, value, sigma) in enumerate(rows):
        for j, c in coefficients.items():
            a[r, index[j]] = c
        y[r] = value
        w[r] = 1.0 / max(sigma, 1e-9)
    weighted = a * w[:, None]
    solution, *_ = np.linalg.lstsq(weighted, y * w, rcond=None)
    covariance = np.linalg.pinv(weighted.T @ weighted)
    _, singular, vt = np.linalg.svd(a)
    rank = int(np.sum(singular > 1e-9 * max(singular.max(initial=0.0), 1e-300)))
    null = vt[rank:]  # directions the rows do not see
    out = {}
    for j, i in index.items():
        if not a[:, i].any():
            continue
        free = undetermined and null.size > 0 and float(np.abs(null[:, i]).max()) > 1e-9
        out[j] = (float(solution[i]), math.inf if free else math.sqrt(max(float(covariance[i, i]), 0.0)))
    return out
