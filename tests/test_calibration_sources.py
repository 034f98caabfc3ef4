"""The calibration learns the single-photon sources (decision 0017 §5): HBT for g2, HOM for M.

The fit alone, on histograms drawn from the exact click distribution of sources as imperfect as a
published one, with different values per input, behind outputs of different efficiency; then the
whole stack on the published source's chip.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np
import pytest
import trio

from actors.calibration._sources import KINDS, Histogram, SourceCheck, fit_sources, source_pairs
from protocol.calibration import Calibrate, CheckReference
from protocol.calibration_model import predicted_visibility
from protocol.memory import GetCalibration, GetJob
from protocol.sources import BALANCED, SourceModel, click_distribution, hom_visibility
from sim import parse_config, write_factory_calibration

from .chips import REAL_CHIP
from .test_executor import bench

REGISTER_ORDER = [0b00, 0b10, 0b01, 0b11]
"""Click patterns (bit 0: output a) in register order (a most significant): neither, b only, a only, both."""


def draw(
    pairs: list[tuple[int, int]],
    sources: dict[int, SourceModel],
    eta: np.ndarray,
    shots: int,
    rng: np.random.Generator,
) -> dict[int, Histogram]:
    """Every phase of the source procedure, as the chip would give it."""
    phases: dict[int, Histogram] = {}
    for a, b in pairs:
        setups = {
            "hbt-a": ([0], [sources[a]], BALANCED),
            "hbt-b": ([1], [sources[b]], BALANCED),
            "dip": ([0, 1], [sources[a], sources[b]], BALANCED),
            "reference": ([0, 1], [sources[a], sources[b]], np.eye(2)),
        }
        for kind in KINDS:
            inputs, models, unitary = setups[kind]
            p = click_distribution(unitary, inputs, models, efficiency=eta[[a, b]], dark=1e-8)
            counts = rng.multinomial(shots, np.clip(p[REGISTER_ORDER], 0, None) / p.sum())
            phases[len(phases)] = Histogram(counts, shots)
    return phases


def own_clicks(sources: dict[int, SourceModel], eta: np.ndarray) -> np.ndarray:
    """Each source's clicks per pulse on its own output (what the detector measurement finds)."""
    return np.array([click_distribution(np.eye(1), [0], sources[j], efficiency=eta[j])[1] for j in sorted(sources)])


@pytest.mark.parametrize("modes", [3, 4])
def test_the_fit_recovers_each_source_s_g2_and_m_within_its_uncertainty(modes: int) -> None:
    rng = np.random.default_rng(modes)
    m_true = [0.95, 0.88, 0.80, 0.92][:modes]
    g2_true = [0.02, 0.035, 0.025, 0.01][:modes]
    sources = {j: SourceModel(brightness=0.6, g2=g2_true[j], indistinguishability=m_true[j]) for j in range(modes)}
    eta = np.array([0.45, 0.52, 0.38, 0.5])[:modes]
    pairs = source_pairs(modes)
    shots = 2_000_000
    fits, homs = fit_sources(
        pairs, draw(pairs, sources, eta, shots, rng), own_clicks(sources, eta), shots, [1e-8] * 4, brightness=0.6
    )

    assert [f.mode for f in fits] == list(range(modes))
    for f in fits:
        assert 0 < f.g2_sigma < 0.004
        assert 0 < f.indistinguishability_sigma < 0.01
        assert abs(f.g2 - g2_true[f.mode]) < 4 * f.g2_sigma, f
        assert abs(f.indistinguishability - m_true[f.mode]) < 4 * f.indistinguishability_sigma, f
    assert [h.modes for h in homs] == [list(p) for p in pairs]
    by_mode = {f.mode: f for f in fits}
    for h in homs:
        a, b = h.modes
        exact = hom_visibility([sources[a], sources[b]], efficiency=eta[[a, b]])
        assert abs(h.visibility - exact) < 4 * h.visibility_sigma  # what was measured ...
        assert predicted_visibility(by_mode, a, b) == pytest.approx(
            exact, abs=4 * h.visibility_sigma
        )  # ... and modelled


def test_distinguishable_sources_fit_m_near_zero_and_perfect_ones_near_one() -> None:
    rng = np.random.default_rng(5)
    eta = np.array([0.5, 0.5, 0.5])
    pairs = source_pairs(3)
    for m, g2 in [(0.0, 0.02), (1.0, 0.0)]:
        sources = {j: SourceModel(brightness=0.8, g2=g2, indistinguishability=m) for j in range(3)}
        fits, homs = fit_sources(
            pairs, draw(pairs, sources, eta, 500_000, rng), own_clicks(sources, eta), 500_000, [0] * 3, brightness=0.8
        )
        for f in fits:
            assert abs(f.indistinguishability - m) < 4 * f.indistinguishability_sigma + 1e-3
            assert abs(f.g2 - g2) < 4 * f.g2_sigma
        assert all(
            abs(h.visibility - (1.0 if m == 1 else hom_visibility([sources[0]] * 2, efficiency=eta[:2])))
            < 4 * h.visibility_sigma
            for h in homs
        )


def test_no_light_gives_no_figures_instead_of_a_wrong_one() -> None:
    """A source whose photons never arrive (a broken fibre): no coincidences, M and g2 marked unknown."""
    pairs = source_pairs(2)
    empty = {i: Histogram(np.array([1000, 0, 0, 0]), 1000) for i in range(4)}
    fits, homs = fit_sources(pairs, empty, np.zeros(2), 1000, [0, 0])
    assert [f.g2_sigma for f in fits] == [-1.0, -1.0]
    assert [f.indistinguishability_sigma for f in fits] == [-1.0, -1.0]
    assert homs[0].visibility_sigma == -1.0


def test_the_drift_check_calls_a_move_beyond_three_sigma_and_not_within() -> None:
    assert not SourceCheck((0, 1), 0.88, 0.005, 0.885, 0.005).moved
    moved = SourceCheck((0, 1), 0.84, 0.005, 0.885, 0.005)
    assert moved.moved
    assert "inputs 0 and 1" in moved.why
    assert "3 sigma" in moved.why
    assert not SourceCheck((0, 1), 0.5, math.inf, 0.885, 0.005).moved  # nothing measured: no verdict


@pytest.mark.parametrize("configured", [0.3, 1.0])
def test_a_wrong_brightness_moves_m_only_slightly(configured: float) -> None:
    """Brightness and loss cannot be told apart: a datasheet off by a factor of two costs under 0.02 in M."""
    sources = {j: SourceModel(brightness=0.6, g2=0.025, indistinguishability=0.92) for j in range(3)}
    eta = np.array([0.45, 0.5, 0.4])
    pairs = source_pairs(3)
    # Expected counts (no sampling): only the model's assumption differs.
    phases = {
        i: Histogram(h.counts, h.shots) for i, h in draw(pairs, sources, eta, 10**9, np.random.default_rng(1)).items()
    }
    fits, _ = fit_sources(pairs, phases, own_clicks(sources, eta), 10**9, [0] * 3, brightness=configured)
    assert all(abs(f.indistinguishability - 0.92) < 0.02 for f in fits), [f.indistinguishability for f in fits]


async def test_a_calibration_measures_the_sources_through_the_queue_and_the_drift_check_sees_m_move(tmp_path):
    """The published source's chip (REAL_CHIP): the stack's calibration finds its g2 and M; when M
    falls, the drift check notices from the HOM alone and the new version has the new M."""
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, REAL_CHIP, 7)
    config = {"factory": str(factory), "points": 8, "reference_every_s": None, "source_shots": 200_000}
    async with bench(tmp_path, calibrate=False, calibration=config, chip=REAL_CHIP) as b:
        device = b.server.device
        done = await b.ask("calibration", Calibrate())
        stored = await b.ask("memory", GetCalibration(device="chip"))
        measured = (await b.ask("memory", GetJob(job=stored.data.sources_job))).record
        assert (measured.state, measured.priority) == ("completed", 1000)  # it ran as a job through the queue
        assert [f.mode for f in stored.data.sources] == [0, 1, 2, 3]
        assert [h.modes for h in stored.data.hom] == [[0, 1], [1, 2], [2, 3], [0, 2]]
        for f in stored.data.sources:
            truth = device.chip.source(f.mode, device.clock)
            assert abs(f.g2 - truth.g2) < 4 * f.g2_sigma, f
            assert abs(f.indistinguishability - truth.indistinguishability) < 4 * f.indistinguishability_sigma, f
            assert f.indistinguishability_sigma < 0.02

        for pair in stored.data.hom[:2]:  # each check repeats the next pair the calibration measured
            steady = await b.ask("calibration", CheckReference())
            assert steady.fidelity > 0.98  # imperfect photons are not taken for a drifted mesh
            assert not steady.recalibrated, steady.reason
            assert steady.visibility_inputs == pair.modes
            assert steady.visibility_calibrated == pair.visibility

        device.chip.source_drift[:] -= 0.15  # every source's M fell (a temperature change at the dots)
        drifted = await b.ask("calibration", CheckReference())
        assert drifted.recalibrated, drifted
        assert "HOM visibility of inputs 2 and 3" in drifted.reason
        assert (drifted.version, drifted.new_version) == (done.version, done.version + 1)
        again = await b.ask("memory", GetCalibration(device="chip"))
        for f in again.data.sources:
            truth = device.chip.source(f.mode, device.clock).indistinguishability
            assert abs(f.indistinguishability - truth) < 4 * f.indistinguishability_sigma, f
            assert f.indistinguishability < 0.85

        # Sources no longer measured: the drift check goes on with the fidelity and the age alone.
        assert b.calibration is not None
        b.calibration.config = msgspec.structs.replace(b.calibration.config, source_shots=0)
        plain = await b.ask("calibration", CheckReference())
        assert (plain.visibility, plain.visibility_inputs, plain.recalibrated) == (None, [], False)


async def test_a_dim_source_is_not_taken_for_a_weak_output(tmp_path):
    """Input 3's source is dim (brightness 0.2): its clicks per pulse are low, its detector is fine."""
    chip = parse_config(
        {
            "modes": 4,
            "heaters": {"drift_rad_per_sqrt_hour": 0.0},
            "sources": {"per_input": {"3": {"brightness": 0.2}}},
        }
    )
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, chip, 7)
    config = {"factory": str(factory), "points": 6, "reference_every_s": None, "source_shots": 50_000}
    async with bench(tmp_path, calibrate=False, calibration=config, chip=chip) as b:
        await b.ask("calibration", Calibrate())
        stored = await b.ask("memory", GetCalibration(device="chip"))
        assert stored.data.detection_efficiency[3] < 0.5 * float(np.median(stored.data.detection_efficiency))
        assert stored.data.degraded_outputs == []
        assert b.scheduler.health.detectors == frozenset()


def test_a_lone_pair_tells_its_product_not_each_m_and_still_predicts_its_own_dip() -> None:
    """Two sources measured only together (a 2-mode chip): sqrt(M_0 M_1) is known, each M is not."""
    rng = np.random.default_rng(3)
    sources = {
        0: SourceModel(brightness=0.6, g2=0.02, indistinguishability=0.97),
        1: SourceModel(brightness=0.6, g2=0.02, indistinguishability=0.85),
    }
    eta = np.array([0.45, 0.5])
    pairs = source_pairs(2)
    fits, homs = fit_sources(
        pairs, draw(pairs, sources, eta, 1_000_000, rng), own_clicks(sources, eta), 10**6, [0, 0], brightness=0.6
    )
    assert [f.indistinguishability_sigma for f in fits] == [-1.0, -1.0]  # cannot tell
    product = math.sqrt(fits[0].indistinguishability * fits[1].indistinguishability)
    assert product == pytest.approx(math.sqrt(0.97 * 0.85), abs=0.01)
    exact = hom_visibility([sources[0], sources[1]], efficiency=eta)
    assert predicted_visibility({f.mode: f for f in fits}, 0, 1) == pytest.approx(
        exact, abs=4 * homs[0].visibility_sigma
    )


def test_a_dark_source_leaves_the_others_m_undetermined_instead_of_equal() -> None:
    """3 modes, source 1 dark: only (0, 2) is measured, so M_0 and M_2 cannot be told apart."""
    rng = np.random.default_rng(4)
    sources = {j: SourceModel(brightness=0.6, g2=0.02, indistinguishability=m) for j, m in enumerate([0.97, 0.9, 0.85])}
    sources[1] = SourceModel(brightness=0.0)
    eta = np.array([0.45, 0.5, 0.4])
    pairs = source_pairs(3)
    fits, _ = fit_sources(
        pairs, draw(pairs, sources, eta, 500_000, rng), own_clicks(sources, eta), 500_000, [0] * 3, brightness=0.6
    )
    assert [f.indistinguishability_sigma for f in fits] == [-1.0, -1.0, -1.0]
    assert fits[1].g2_sigma == -1.0  # no light, no g2


@pytest.mark.parametrize("dark", [1e-8, 1e-3, 1e-2])
def test_dark_counts_are_taken_out_of_g2_exactly(dark: float) -> None:
    """SPAD-like dark counts (1e-2 per gate) against 3 % of the pulses clicking: g2 still 0.025."""
    sources = {j: SourceModel(brightness=0.6, g2=0.025, indistinguishability=0.92) for j in range(3)}
    eta = np.array([0.05, 0.05, 0.05])
    pairs = source_pairs(3)
    phases = {}
    for a, b in pairs:  # expected counts of the HBT phases (10^12 shots: no noise to speak of)
        for inputs, model in (([0], sources[a]), ([1], sources[b])):
            p = click_distribution(BALANCED, inputs, [model], efficiency=eta[[a, b]], dark=dark)
            phases[len(phases)] = Histogram(np.round(p[REGISTER_ORDER] * 1e12), 10**12)
        phases[len(phases)] = Histogram(np.array([10**12, 0, 0, 0]), 10**12)  # no dip or reference: not the point
        phases[len(phases)] = Histogram(np.array([10**12, 0, 0, 0]), 10**12)
    fits, _ = fit_sources(pairs, phases, own_clicks(sources, eta), 10**12, [dark] * 3, brightness=0.6)
    assert [round(f.g2, 4) for f in fits] == [0.025, 0.025, 0.025]


async def test_many_drift_checks_at_once_recalibrate_once_when_the_sources_moved(tmp_path):
    """Six clients ask for the drift check at once after every M fell: each sees the move, and the
    decision to recalibrate, made under the calibration lock against the latest version, is taken once."""
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, REAL_CHIP, 7)
    config = {
        "factory": str(factory),
        "points": 6,
        "reference_every_s": None,
        "reference_shots": 5_000,
        "source_shots": 50_000,
    }
    async with bench(tmp_path, calibrate=False, calibration=config, chip=REAL_CHIP) as b:
        first = await b.ask("calibration", Calibrate())
        b.server.device.chip.source_drift[:] -= 0.2
        answers: list[Any] = []

        async def check() -> None:
            answers.append(await b.ask("calibration", CheckReference()))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(check)
        assert len(answers) == 6
        assert sum(a.recalibrated for a in answers) == 1, [a.reason for a in answers]
        for a in answers:  # the one that recalibrated; those that found version 2 stored since; those run under it
            if a.version == first.version:
                assert "HOM visibility" in a.reason
                assert a.recalibrated or "was stored since" in a.reason
            else:
                assert (a.version, a.reason, a.recalibrated) == (first.version + 1, "", False)
        latest = await b.ask("memory", GetCalibration(device="chip"))
        assert latest.version == first.version + 1
