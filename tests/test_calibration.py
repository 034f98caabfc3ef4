"""Calibration: a sweep through the job queue, a fit that finds the chip's hidden parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from actors.calibration import fit_sweeps
from actors.calibration._actor import sweep_data
from actors.calibration._outcome import Outcome
from protocol import AwenError
from protocol.calibration import Calibrate, CheckReference, GetCalibrationStatus
from protocol.calibration_model import CalibrationModel
from protocol.memory import GetCalibration, GetJob, ListCalibrations, PutCalibration, QueryJobs
from protocol.mesh import clements_layout
from protocol.scheduler import Pause, Resume
from runtime import RemoteError
from sim import chip_of, factory_calibration, write_factory_calibration

from .chips import CHIP, sweep_readings, truth
from .circuits import hom
from .helpers import eventually
from .test_executor import bench


def wrapped(x: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * x))


async def test_a_calibration_recovers_the_hidden_phi0_and_alpha_within_its_uncertainties(tmp_path):
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, CHIP, 7)
    async with bench(tmp_path, calibrate=False, calibration={"factory": str(factory), "points": 8}) as b:
        before = await b.ask("calibration", GetCalibrationStatus())
        assert (before.version, before.valid) == (None, False)
        result = await b.ask("calibration", Calibrate())
        assert result.version == 1
        assert result.heaters_fitted == 2 * clements_layout(CHIP.modes).mzi_count
        sweep = (await b.ask("memory", GetJob(job=result.job))).record
        assert (sweep.state, sweep.priority) == ("completed", 1000)  # it ran as a job through the queue

        stored = await b.ask("memory", GetCalibration(device="chip"))
        truth = chip_of(CHIP, 7)
        fitted = np.asarray(stored.data.fitted_heaters)
        phi0 = np.asarray(stored.fits.phi0)[fitted]
        alpha = np.asarray(stored.fits.alpha)[fitted]
        phi0_sigma = np.asarray(stored.uncertainties.phi0)[fitted]
        alpha_sigma = np.asarray(stored.uncertainties.alpha)[fitted]
        start = np.asarray(factory_calibration(CHIP, 7).phi0)[fitted]
        assert np.abs(wrapped(start - truth.phi0[fitted])).max() > 0.03  # the factory values are off ...
        assert np.all(np.abs(wrapped(phi0 - truth.phi0[fitted])) < 4 * phi0_sigma)  # ... the fit is not
        assert np.all(np.abs(alpha - truth.alpha[fitted]) < 4 * alpha_sigma)
        assert phi0_sigma.max() < 1e-2

        detection = np.asarray(stored.data.detection_efficiency)
        expected = truth.input_transmission * truth.mesh_transmission * truth.output_transmission * truth.efficiency
        assert np.all(np.abs(detection - expected) < 4 * np.sqrt(expected * (1 - expected) / 20_000))
        assert np.asarray(stored.data.dark_counts_per_shot).max() < 1e-3  # 10 Hz over 1 ns gates

        status = await b.ask("calibration", GetCalibrationStatus())
        assert (status.version, status.valid) == (1, True)
        record = await b.run(hom(10_000), "hom-after-calibration")
        assert record.calibration == 1
        counts = await b.counts("hom-after-calibration", "p0.c")
        assert counts[0b11] <= 5  # the dip, on a chip set with awen's own calibration


async def test_without_a_starting_point_calibration_refuses_and_says_why(tmp_path):
    async with bench(tmp_path, calibrate=False, calibration={}) as b:
        with pytest.raises(Exception, match="no factory calibration is configured"):
            await b.ask("calibration", Calibrate())


def test_the_fit_alone_recovers_the_chip_from_sweep_readings():
    """The fit on readings computed straight from the simulated chip, without the stack in between."""
    chip = chip_of(CHIP, 3)
    plan, powers = sweep_readings(chip, points=6)
    start = CalibrationModel.from_fits(0, factory_calibration(CHIP, 3))
    fit = fit_sweeps(clements_layout(CHIP.modes), sweep_data(plan, powers), start, version=1)
    assert fit.reduced_chi2 < 1
    assert np.abs(wrapped(fit.model.phi0[fit.fitted] - chip.phi0[fit.fitted])).max() < 1e-3
    assert np.abs(fit.model.alpha[fit.fitted] / chip.alpha[fit.fitted] - 1).max() < 1e-3


async def test_the_drift_check_recalibrates_when_the_chip_moved_and_weak_outputs_are_reported(tmp_path):
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, CHIP, 7)
    config = {"factory": str(factory), "points": 8, "reference_every_s": None, "reference_shots": 20_000}
    async with bench(tmp_path, calibrate=False, calibration=config) as b:
        chip = b.server.device.chip
        chip.output_transmission[3] *= 0.2  # a bad fibre on output 3
        await b.ask("calibration", Calibrate())
        assert b.scheduler.health.detectors == frozenset({3})  # plans now keep measured modes off it

        steady = await b.ask("calibration", CheckReference())
        assert steady.fidelity > 0.98
        assert not steady.recalibrated
        assert steady.events > 1000

        chip.phi0[[0, 5, 7]] += 0.7  # the chip drifted (or was knocked) since version 1
        drifted = await b.ask("calibration", CheckReference())
        assert drifted.fidelity < 0.98
        assert drifted.recalibrated
        assert (drifted.new_version, drifted.version) == (2, 1)
        assert "reference fidelity" in drifted.reason

        again = await b.ask("calibration", CheckReference())
        assert again.version == 2
        assert again.fidelity > 0.98


async def test_a_drift_check_does_not_recalibrate_when_a_newer_calibration_came_while_it_ran(tmp_path):
    # The check's job ran under version 1 and found the chip drifted; meanwhile a calibration (whose fit
    # ends after the check's job began) stored version 2. Recalibrating again would be a needless half
    # minute on the chip: the decision is made with the calibration lock held, against the latest version.
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, CHIP, 7)
    config = {"factory": str(factory), "points": 8, "reference_every_s": None, "reference_shots": 5_000}
    async with bench(tmp_path, calibrate=False, calibration=config) as b:
        assert b.calibration is not None
        await b.ask("calibration", Calibrate())
        b.server.device.chip.phi0[[0, 5, 7]] += 0.7  # the chip drifted since version 1
        outcome: list[Any] = []

        async def check() -> None:
            outcome.append(await b.ask("calibration", CheckReference()))

        async with trio.open_nursery() as nursery:
            await b.calibration._lock.acquire()  # a calibration is under way
            nursery.start_soon(check)

            async def reference_done() -> bool:
                jobs = (await b.ask("memory", QueryJobs(states=["completed"]))).jobs
                return any(j.job.startswith("ref-") for j in jobs)

            await eventually(reference_done)
            fits = truth(b.server).fits()
            await b.ask("memory", PutCalibration(device="chip", identity="the calibration under way", fits=fits))
            b.calibration._lock.release()
        (checked,) = outcome
        assert checked.fidelity < 0.98
        assert (checked.version, checked.recalibrated, checked.new_version) == (1, False, None)
        assert "version 2 was stored since" in checked.reason
        versions = (await b.ask("memory", ListCalibrations(device="chip"))).calibrations
        assert [c.version for c in versions] == [1, 2]


async def test_calibrate_asked_while_a_calibration_runs_answers_with_that_one(tmp_path):
    # Decision 0014 §4, "Reconnect": a re-sent cal.calibrate (or another client's) waits for the calibration
    # under way and answers with its version; one asked for after it ended begins anew.
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, CHIP, 7)
    config = {"factory": str(factory), "points": 4, "reference_every_s": None}
    async with bench(tmp_path, calibrate=False, calibration=config) as b:
        answers: list[Any] = []

        async def calibrate() -> None:
            answers.append(await b.ask("calibration", Calibrate()))

        async def sweeps() -> list[str]:
            jobs = (await b.ask("memory", QueryJobs())).jobs
            return [j.job for j in jobs if j.job.startswith("cal-")]

        await b.ask("scheduler", Pause(reason="the sweep waits until every request has come"))
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # at once: one begins, the others wait for the lock, or for it
                nursery.start_soon(calibrate)
            await eventually(sweeps)  # its sweep is queued: the calibration runs
            for _ in range(2):  # while it runs
                nursery.start_soon(calibrate)
            await trio.testing.wait_all_tasks_blocked(0.05)  # every request has reached the calibration actor
            assert (await b.ask("calibration", GetCalibrationStatus())).calibrating
            await b.ask("scheduler", Resume())
        assert len(answers) == 5
        assert {(a.version, a.job) for a in answers} == {(1, answers[0].job)}
        assert len(await sweeps()) == 1
        versions = (await b.ask("memory", ListCalibrations(device="chip"))).calibrations
        assert [c.version for c in versions] == [1]

        after = await b.ask("calibration", Calibrate())
        assert after.version == 2
        assert after.job != answers[0].job
        assert len(await sweeps()) == 2


async def test_every_request_waiting_for_a_calibration_that_fails_hears_its_error():
    for error in (
        AwenError("the sweep ended failed", field="points"),
        RemoteError("not-found", "no job 'cal-1'", field="job", peer="memory"),  # another __init__
    ):
        outcome = Outcome()
        errors: list[AwenError] = []

        async def wait(outcome: Outcome = outcome, errors: list[AwenError] = errors) -> None:
            with pytest.raises(AwenError) as raised:
                await outcome.wait()
            errors.append(raised.value)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            outcome.fail(error)
        assert [(type(e), str(e), e.message, e.field) for e in errors] == [
            (type(error), str(error), error.message, error.field)
        ] * 3
        assert len({id(e) for e in errors} | {id(error)}) == 4  # a copy each: one traceback per waiter
    assert errors[0].code == "not-found"
