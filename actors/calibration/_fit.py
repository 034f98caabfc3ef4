"""Fitting the chip: heater sweeps with coherent light and photodiodes, least squares with uncertainties.

The data: for each configuration, the voltage on every heater, the coherent
input amplitudes (known powers and phases) and the photodiode power at every
output. The model: every heater's phase is ``phi0 + alpha V**2`` plus a
fraction of each neighbour's heating (crosstalk); the field crosses the mesh
MZI by MZI (`protocol.mesh`); output ``j`` reads ``s_j |field_j|**2``, with
``s_j`` the unknown transmission and gain of that output.

The output phase shifters change no power reading, so their ``phi0`` and
``alpha`` cannot be measured this way (nor do they change a photon-counting
result); they are kept at their starting values and reported as such.

Levenberg-Marquardt (numpy least squares on the normal equations), starting
from the latest calibration or the factory's, in two stages: first the phase
offsets and output scales alone, ``alpha`` and the crosstalk held at their
starting values, then every parameter at once from there. What moves between
calibrations is mostly ``phi0`` (drift); fitted all at once from offsets a few
tenths of a radian off, the first Gauss-Newton steps trade the phase error
for wrong ``alpha`` or crosstalk values (a negative crosstalk, an ``alpha``
several times too large) and the fit settles in a local minimum that
reproduces the sweep badly (reduced chi-square in the thousands), and that a
recalibration started from it does not leave. Uncertainties from the
covariance, scaled by the reduced chi-square so that model error shows in
them.

A fit still far off (reduced chi-square above a limit, 10 by default) is
tried again from other starting points, the best kept: typical ``alpha`` and
crosstalk; the offsets scanned on a coarse grid, heater by heater from the
start's and MZI by MZI from the fit's; random offsets around the start's.
After a month of drift (~0.5 rad rms, some offsets 1.5 rad off) one fit in
nine needs them. One that ends above the limit anyway says so
(`FitResult.found`), and the calibration actor refuses to store it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from protocol import AwenError
from protocol.calibration_model import CalibrationModel
from protocol.mesh import MeshLayout


class FitFailed(AwenError):
    """The fit did not converge, or the data cannot determine the parameters."""


@dataclass
class SweepData:
    volts: np.ndarray
    """(configurations, heaters) applied voltages."""
    inputs: np.ndarray
    """(configurations, modes) complex input amplitudes, sqrt(W) times the phase."""
    powers: np.ndarray
    """(configurations, modes) photodiode readings in W."""


@dataclass
class FitResult:
    model: CalibrationModel
    phi0_sigma: np.ndarray
    alpha_sigma: np.ndarray
    crosstalk_sigma: np.ndarray
    """One per fitted crosstalk pair, in the order of ``pairs``."""
    pairs: list[tuple[int, int]]
    scales: np.ndarray
    fitted: np.ndarray
    """Indices of the heaters fitted (the others cannot be seen by photodiodes)."""
    residual_rms: float
    """Relative: rms of (model - data) / data scale."""
    reduced_chi2: float
    iterations: int
    found: bool = True
    """The reduced chi-square ended within ``chi2_limit``; if not, the model does not explain the sweep
    (every restart ended in a local minimum, or the readings are wrong) and must not be used."""
    chi2_limit: float = 10.0
    restarts: int = 0
    """Starting points tried after the first."""
    history: list[float] = field(default_factory=list)


def propagate(layout: MeshLayout, phases: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Output fields (before the output phase shifters) for each configuration's phases and inputs."""
    f = np.array(inputs, dtype=np.complex128, copy=True)
    for block in layout.mzis:
        theta = phases[:, block.theta_heater]
        phi = phases[:, block.phi_heater]
        half = 0.5 * theta
        s, c = np.sin(half), np.cos(half)
        g = 1j * np.exp(1j * half)
        e = np.exp(1j * phi)
        top = block.top
        a, b = f[:, top], f[:, top + 1]
        f[:, top], f[:, top + 1] = g * (e * s * a + c * b), g * (e * c * a - s * b)
    return f


class _Problem:
    """The parameter vector and the residuals it gives."""

    def __init__(self, layout: MeshLayout, data: SweepData, start: CalibrationModel) -> None:
        self.layout = layout
        self.data = data
        self.start = start
        n = layout.heater_count
        self.fitted = np.arange(2 * layout.mzi_count)
        fitted_set = set(self.fitted.tolist())
        self.pairs = [(int(i), int(j)) for i in self.fitted for j in layout.neighbours(int(i)) if j in fitted_set]
        self.n = n
        self.v2 = data.volts**2
        self.scale = float(np.median(data.powers[data.powers > 0])) if np.any(data.powers > 0) else 1.0
        self.sigma = 1e-4 * self.scale + 1e-9

    def initial(self) -> np.ndarray:
        k = len(self.fitted)
        phi0 = self.start.phi0[self.fitted]
        log_alpha = np.log(self.start.alpha[self.fitted])
        cross = np.array([self.start.crosstalk[i, j] for i, j in self.pairs])
        first = self._predict(phi0, np.exp(log_alpha), cross, np.ones(self.layout.modes))
        # Output scales from the data at the start point: least squares per output.
        scales = np.array(
            [
                max(1e-12, float(first[:, j] @ self.data.powers[:, j]) / max(1e-30, float(first[:, j] @ first[:, j])))
                for j in range(self.layout.modes)
            ]
        )
        assert len(phi0) == k
        return np.concatenate([phi0, log_alpha, cross, np.log(scales)])

    def unpack(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k, e = len(self.fitted), len(self.pairs)
        return p[:k], np.exp(p[k : 2 * k]), p[2 * k : 2 * k + e], np.exp(p[2 * k + e :])

    def _predict(self, phi0: np.ndarray, alpha: np.ndarray, cross: np.ndarray, scales: np.ndarray) -> np.ndarray:
        full_phi0 = self.start.phi0.copy()
        full_alpha = self.start.alpha.copy()
        full_phi0[self.fitted] = phi0
        full_alpha[self.fitted] = alpha
        own = self.v2 * full_alpha
        phases = full_phi0 + own
        if self.pairs:
            rows = np.array([i for i, _ in self.pairs])
            cols = np.array([j for _, j in self.pairs])
            coupling = np.zeros((self.n, self.n))
            coupling[rows, cols] = cross
            phases = phases + own @ coupling.T
        fields = propagate(self.layout, phases, self.data.inputs)
        result: np.ndarray = scales * np.abs(fields) ** 2
        return result

    def residuals(self, p: np.ndarray) -> np.ndarray:
        predicted = self._predict(*self.unpack(p))
        r: np.ndarray = ((predicted - self.data.powers) / self.sigma).ravel()
        return r

    def offsets_and_scales(self) -> np.ndarray:
        """Indices (in the parameter vector) of the phase offsets and the output scales."""
        k, e = len(self.fitted), len(self.pairs)
        return np.concatenate([np.arange(k), np.arange(2 * k + e, 2 * k + e + self.layout.modes)])

    def scan_offsets(self, phi0: np.ndarray, groups: list[list[int]], grid: tuple[int, ...], passes: int) -> np.ndarray:
        """``phi0`` with each group of heaters' offsets moved to the best of a coarse grid, one group at a time.

        Alpha and the crosstalk are held at the start's. A group's candidates are its current offsets
        plus ``2 pi k / grid[i]`` on its ``i``-th heater (every combination), each scored by the chi-square
        over every reading, the output scales at their best (a linear least squares per output), every
        other heater at its current offset. Goes over the groups until none moves, or ``passes`` times;
        the current offsets are a candidate, so a group moves only if that lowers the cost.
        """
        phi0 = phi0.copy()
        own = self.v2 * self.start.alpha
        heating = own
        if self.pairs:
            rows = np.array([i for i, _ in self.pairs])
            cols = np.array([j for _, j in self.pairs])
            coupling = np.zeros((self.n, self.n))
            coupling[rows, cols] = self.start.crosstalk[rows, cols]
            heating = own + own @ coupling.T
        steps = [2 * math.pi * np.arange(g) / g for g in grid]
        shifts = np.stack(np.meshgrid(*steps, indexing="ij"), axis=-1).reshape(-1, len(grid))
        count = len(shifts)
        inputs = np.tile(self.data.inputs, (count, 1))
        readings = self.data.powers
        for _ in range(passes):
            moved = False
            for group in groups:
                phases = np.repeat((phi0 + heating)[None], count, axis=0)
                phases[:, :, group] += shifts[:, None, :]
                fields = propagate(self.layout, phases.reshape(-1, self.n), inputs)
                powers = (np.abs(fields) ** 2).reshape(count, *readings.shape)
                # Output scales at their best: what is left of sum d^2 is sum d^2 - (p.d)^2 / (p.p), per output.
                overlap = np.einsum("crj,rj->cj", powers, readings)
                norm = np.einsum("crj,crj->cj", powers, powers)
                cost = -np.sum(overlap**2 / np.maximum(norm, 1e-300), axis=1)
                best = int(np.argmin(cost))
                if cost[best] < cost[0]:
                    phi0[group] += shifts[best]
                    moved = True
            if not moved:
                break
        result: np.ndarray = np.mod(phi0, 2 * math.pi)
        return result

    def jacobian(self, p: np.ndarray, r0: np.ndarray, free: np.ndarray | None = None) -> np.ndarray:
        """d residuals / d p, over the parameters ``free`` (all if none), in that order."""
        columns = np.arange(p.size) if free is None else free
        jac = np.empty((r0.size, columns.size))
        for c, i in enumerate(columns):
            step = 1e-6 * max(1.0, abs(p[i]))
            moved = p.copy()
            moved[i] += step
            jac[:, c] = (self.residuals(moved) - r0) / step
        return jac


def _levenberg_marquardt(
    problem: _Problem, p: np.ndarray, free: np.ndarray | None, max_iterations: int
) -> tuple[np.ndarray, np.ndarray, float, int, list[float]]:
    """Minimise the residuals over the parameters ``free`` (all if none), the others held: (p, r, cost, its, costs)."""
    r = problem.residuals(p)
    cost = float(r @ r)
    history = [cost]
    damping = 1e-3
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - reported below
        jac = problem.jacobian(p, r, free)
        normal = jac.T @ jac
        gradient = jac.T @ r
        improved = False
        relative = 0.0
        step = np.zeros(0)
        for _ in range(12):
            lhs = normal + damping * np.diag(np.diag(normal) + 1e-12)
            try:
                step = -np.linalg.solve(lhs, gradient)
            except np.linalg.LinAlgError:
                damping *= 10
                continue
            trial = p.copy()
            if free is None:
                trial += step
            else:
                trial[free] += step
            r_trial = problem.residuals(trial)
            trial_cost = float(r_trial @ r_trial)
            if trial_cost < cost:
                p, r, improved = trial, r_trial, True
                relative = (cost - trial_cost) / max(cost, 1e-300)
                cost = trial_cost
                damping = max(damping / 5, 1e-9)
                break
            damping *= 5
        history.append(cost)
        if not improved or relative < 1e-12 or float(np.abs(step).max(initial=0.0)) < 1e-10:
            break
    return p, r, cost, iterations, history


RETRY_CHI2 = 10.0
"""A fit whose reduced chi-square ends above this is tried again from other starting points; the default limit
of a fit that found the chip (`FitResult.found`).

The readings' sigma is set generously (1e-4 of a typical reading): a fit that found the chip ends well
under 1 (0.02 to 0.11 on the simulated chips, with or without a month of drift); one caught in a local
minimum ends in the thousands (8e3 to 3e6).
"""

SCAN_GRID = 16
"""Candidate offsets per heater in a scan (`_Problem.scan_offsets`): every 2 pi / 16, within 0.2 rad of any value."""
SCAN_PHI_GRID = 4
"""Candidate ``phi`` offsets in the scan of an MZI's two (a reflected MZI's is off by pi; 16 x 16 candidates
per MZI would take minutes on 8 modes)."""
SCAN_PASSES = 4
"""Times a scan goes over the heaters at most."""
RANDOM_RESTARTS = 8
"""Random starting points tried, at most, after the scans. Of 300 draws of a month's drift on 4 modes, 33
needed a restart: typical values found the chip in 1, the scans in 27, random restarts in 5 (4 at most)."""
RANDOM_SPREAD = 0.5
"""Standard deviation of a random restart's offsets around the starting calibration's, in rad."""


def _staged(problem: _Problem, max_iterations: int) -> tuple[np.ndarray, np.ndarray, float, int, list[float]]:
    """The two stages from the problem's start: offsets and scales alone, then everything. (p, r, cost, its, costs)."""
    p, r, cost, first, history = _levenberg_marquardt(
        problem, problem.initial(), problem.offsets_and_scales(), max_iterations
    )
    p, r, cost, second, more = _levenberg_marquardt(problem, p, None, max_iterations)
    return p, r, cost, first + second, history + more[1:]


def _typical(start: CalibrationModel, problem: _Problem) -> CalibrationModel:
    """``start`` with every fitted crosstalk at the median of its own, and any alpha over 2x off the median at it."""
    fitted = problem.fitted
    alpha = start.alpha.copy()
    median = float(np.median(alpha[fitted]))
    odd = fitted[(alpha[fitted] > 2 * median) | (alpha[fitted] < 0.5 * median)]
    alpha[odd] = median
    crosstalk = start.crosstalk.copy()
    if problem.pairs:
        rows = np.array([i for i, _ in problem.pairs])
        cols = np.array([j for _, j in problem.pairs])
        crosstalk[rows, cols] = max(0.0, float(np.median(crosstalk[rows, cols])))
    return CalibrationModel(version=start.version, phi0=start.phi0.copy(), alpha=alpha, crosstalk=crosstalk)


def fit_sweeps(
    layout: MeshLayout,
    data: SweepData,
    start: CalibrationModel,
    *,
    version: int,
    max_iterations: int = 60,
    chi2_limit: float = RETRY_CHI2,
    restarts: int = RANDOM_RESTARTS,
) -> FitResult:
    """Fit phi0, alpha, crosstalk and output scales to the sweep data, starting from ``start``.

    A fit ending with a reduced chi-square above ``chi2_limit`` is tried again from other starting points
    (typical alpha and crosstalk; two scans of the offsets; up to ``restarts`` random ones), the best kept;
    ``FitResult.found`` says whether it ended within the limit.
    """
    problem = _Problem(layout, data, start)
    p, r, cost, iterations, history = _staged(problem, max_iterations)
    dof = max(1, r.size - p.size)
    reduced = cost / dof

    def attempt(retry: _Problem) -> None:
        """Fit again from ``retry``'s start; keep it if its chi-square is the best so far."""
        nonlocal problem, p, r, cost, reduced, iterations, history
        p2, r2, cost2, iterations2, history2 = _staged(retry, max_iterations)
        iterations += iterations2
        history += history2
        if cost2 < cost or not np.isfinite(cost):
            problem, p, r, cost = retry, p2, r2, cost2
            reduced = cost / dof

    typical_tried = False
    if not reduced <= chi2_limit:
        # A start that is itself a local minimum's (a calibration stored from a bad fit: a wrong alpha or
        # crosstalk the offsets-first stage holds) keeps the fit there: again from typical values of both.
        typical_tried = True
        attempt(_Problem(layout, data, _typical(start, problem)))
    # Still far off: the fit ended in a local minimum of the offsets (a month of drift moves them ~0.5 rad
    # rms, beyond the fit's basin for some heaters). From other starting points, best chi-square kept:
    # a scan of each heater's offset from the start's; a scan of each MZI's two offsets from the fit's
    # (a minimum with one MZI's offsets reflected, theta -> -theta and phi -> phi + pi); random offsets
    # around the start's, every other one scanned. Seeded: the same data give the same fit.
    fitted = problem.fitted
    singles = [[int(h)] for h in fitted]
    mzis = [[block.theta_heater, block.phi_heater] for block in layout.mzis]
    rng = np.random.default_rng(0)
    attempts = 0
    while not reduced <= chi2_limit and attempts < 2 + restarts:
        scan = _Problem(layout, data, start)
        if attempts == 0:
            phi0 = scan.scan_offsets(start.phi0, singles, (SCAN_GRID,), SCAN_PASSES)
        elif attempts == 1:
            here = problem.start.phi0.copy()
            here[problem.fitted] = problem.unpack(p)[0]
            phi0 = scan.scan_offsets(here, mzis, (SCAN_GRID, SCAN_PHI_GRID), SCAN_PASSES)
        else:
            phi0 = start.phi0.copy()
            phi0[fitted] += RANDOM_SPREAD * rng.standard_normal(fitted.size)
            if attempts % 2:
                phi0 = scan.scan_offsets(phi0, singles, (SCAN_GRID,), SCAN_PASSES)
        attempts += 1
        attempt(_Problem(layout, data, CalibrationModel(start.version, phi0, start.alpha, start.crosstalk)))
    jac = problem.jacobian(p, r)
    try:
        covariance = np.linalg.pinv(jac.T @ jac) * max(reduced, 1.0)
    except np.linalg.LinAlgError as exc:
        raise FitFailed(f"the sweep data do not determine the parameters: {exc}") from None
    sigma = np.sqrt(np.clip(np.diag(covariance), 0, None))
    phi0, alpha, cross, scales = problem.unpack(p)
    k, e = len(problem.fitted), len(problem.pairs)
    full_phi0 = problem.start.phi0.copy()
    full_alpha = problem.start.alpha.copy()
    full_phi0[problem.fitted] = np.mod(phi0, 2 * math.pi)
    full_alpha[problem.fitted] = alpha
    crosstalk = problem.start.crosstalk.copy()
    for (i, j), value in zip(problem.pairs, cross, strict=True):
        crosstalk[i, j] = value
    phi0_sigma = np.full(problem.n, math.inf)
    alpha_sigma = np.full(problem.n, math.inf)
    phi0_sigma[problem.fitted] = sigma[:k]
    alpha_sigma[problem.fitted] = sigma[k : 2 * k] * alpha  # d alpha = alpha d log alpha
    relative = float(
        np.sqrt(np.mean(((problem._predict(phi0, alpha, cross, scales) - data.powers) / problem.scale) ** 2))
    )
    if not np.isfinite(cost):
        raise FitFailed("the fit diverged")
    return FitResult(
        model=CalibrationModel(version=version, phi0=full_phi0, alpha=full_alpha, crosstalk=crosstalk),
        phi0_sigma=phi0_sigma,
        alpha_sigma=alpha_sigma,
        crosstalk_sigma=sigma[2 * k : 2 * k + e],
        pairs=problem.pairs,
        scales=scales,
        fitted=problem.fitted,
        residual_rms=relative,
        reduced_chi2=reduced,
        iterations=iterations,
        found=bool(reduced <= chi2_limit),
        chi2_limit=chi2_limit,
        restarts=attempts + (1 if typical_tried else 0),
        history=history,
    )


def refuse_unfound(fit: FitResult, version: int | None) -> None:
    """Raise `FitFailed` when ``fit`` did not find the chip, so that its model is never stored.

    ``version``: the stored calibration the fit started from; none: it started from the factory's.
    """
    if fit.found:
        return
    origin = "the factory calibration" if version is None else f"version {version}"
    advice = (
        "a fit from the factory calibration (config.factory) may find it, but the actor starts from that table "
        "only when no calibration is stored"
        if version is not None
        else "check that config.factory is this chip's table"
    )
    raise FitFailed(
        f"the calibration fit does not explain the sweep: reduced chi-square {fit.reduced_chi2:.3g}, above the limit "
        f"{fit.chi2_limit:g} (config.max_reduced_chi2), after {fit.restarts} restarts; nothing was stored. Either "
        "the readings are wrong (check the coherent light, the photodiodes and the device, then calibrate again) "
        f"or the chip moved too far from {origin} for the fit to find it: {advice}"
    )
