"""Recalibrating after the chip drifted: the fit must find the chip again, not a local minimum near it."""

from __future__ import annotations

import math

import numpy as np

from actors.calibration import fit_sweeps
from actors.calibration._actor import sweep_data
from actors.calibration._fit import FitResult
from protocol.calibration_model import CalibrationModel
from protocol.mesh import clements_layout
from sim import chip_of
from sim._chip import Chip

from .chips import CHIP, sweep_readings

WEEK_H = 24 * 7


def wrapped(x: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * x))


def drifted(seed: int, drift_seed: int, hours: float) -> tuple[Chip, CalibrationModel]:
    """The chip after ``hours`` of drift (a draw of the simulator's random walk), and a calibration made before it."""
    chip = chip_of(CHIP, seed)
    before = CalibrationModel(0, chip.phi0.copy(), chip.alpha.copy(), chip.crosstalk.copy())
    step = 0.02 * math.sqrt(hours)  # the simulator's default drift, rad per sqrt(hour)
    chip.phi0 = chip.phi0 + step * np.random.default_rng(drift_seed).standard_normal(chip.phi0.size)
    return chip, before


def assert_found(fit: FitResult, chip: Chip) -> None:
    f = fit.fitted
    assert fit.reduced_chi2 < 1, f"reduced chi2 {fit.reduced_chi2:.1f}: a local minimum"
    assert np.abs(wrapped(fit.model.phi0[f] - chip.phi0[f])).max() < 1e-3
    assert np.abs(fit.model.alpha[f] / chip.alpha[f] - 1).max() < 1e-3
    assert np.abs(fit.model.crosstalk - chip.crosstalk).max() < 5e-3


def test_after_a_week_of_drift_the_fit_from_the_last_calibration_finds_the_chip():
    # This draw (offsets up to 0.53 rad off) once ended with crosstalk[11, 10] = -0.14 (truth +0.03), reduced
    # chi2 ~3000: the phase error traded for a wrong crosstalk on the first all-parameter steps.
    chip, before = drifted(2, 9, WEEK_H)
    plan, powers = sweep_readings(chip)
    fit = fit_sweeps(clements_layout(CHIP.modes), sweep_data(plan, powers), before, version=1)
    assert_found(fit, chip)


def test_a_calibration_stored_from_a_bad_fit_does_not_keep_the_next_one_there():
    # The last calibration's offsets are right, its crosstalk and one alpha are not (what a fit caught in a
    # local minimum stores): starting there, the fit must still find the chip, not stay where it was.
    chip, _ = drifted(2, 9, WEEK_H)
    crosstalk = chip.crosstalk.copy()
    crosstalk[11, 10] = -0.143
    alpha = chip.alpha.copy()
    alpha[5] *= 4
    bad = CalibrationModel(2, chip.phi0.copy(), alpha, crosstalk)
    plan, powers = sweep_readings(chip)
    fit = fit_sweeps(clements_layout(CHIP.modes), sweep_data(plan, powers), bad, version=3)
    assert_found(fit, chip)


def test_drifts_of_a_week_are_all_recovered():
    layout = clements_layout(CHIP.modes)
    for seed in (1, 2, 5):
        for drift_seed in range(10):
            chip, before = drifted(seed, drift_seed, WEEK_H)
            plan, powers = sweep_readings(chip)
            fit = fit_sweeps(layout, sweep_data(plan, powers), before, version=1)
            assert fit.reduced_chi2 < 1, f"chip {seed}, drift {drift_seed}: reduced chi2 {fit.reduced_chi2:.1f}"
