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
"""A fit whose reduced chi-square ends above this is tried again from typical alpha and crosstalk values.

The readings' sigma is set generously (1e-4 of a typical reading): a fit that found the chip ends well
under 1; one caught in a local minimum ends in the thousands.
"""


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
    layout: MeshLayout, data: SweepData, start: CalibrationModel, *, version: int, max_iterations: int = 60
) -> FitResult:
    """Fit phi0, alpha, crosstalk and output scales to the sweep data, starting from ``start``."""
    problem = _Problem(layout, data, start)
    p, r, cost, iterations, history = _staged(problem, max_iterations)
    dof = max(1, r.size - p.size)
    reduced = cost / dof
    if not reduced <= RETRY_CHI2:
        # A start that is itself a local minimum's (a calibration stored from a bad fit: a wrong alpha or
        # crosstalk the offsets-first stage holds) keeps the fit there: again from typical values of both.
        retry = _Problem(layout, data, _typical(start, problem))
        p2, r2, cost2, iterations2, history2 = _staged(retry, max_iterations)
        iterations += iterations2
        history += history2
        if cost2 < cost or not np.isfinite(cost):
            problem, p, r, cost = retry, p2, r2, cost2
            reduced = cost / dof
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
        history=history,
    )
