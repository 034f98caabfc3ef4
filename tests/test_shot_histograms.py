"""Shots travel as counts per distinct pattern (decision 0017 §6): the same numbers as every shot's pattern.

The device answers ``FETCh:HISTogram?`` (a few records) where it used to send
``FETCh:PATTerns?`` (a row per shot); drawn from an exact distribution without
dead time, the shots are one multinomial draw. These tests hold the two forms
to each other, on the device, through the driver and the HAL, and keep what
depends on the order of the shots (dead time) as it was.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import drivers._replies
from drivers import open_driver
from protocol import photonica as px
from protocol import scpi
from protocol.hal import ConfigureInputs, InputSetting, RunShots
from protocol.results import click_totals, register_histogram
from sim import Device, SimConfig
from sim._sampling import Histogram, _dead_time

from .test_hal import bench
from .test_sim_physics import identity_phases, program, quiet_config

IDEAL = {"brightness": 1.0, "g2": 0.0, "indistinguishability": 1.0}
IMPERFECT = {"brightness": 0.7, "g2": 0.03, "indistinguishability": 0.9}
NO_LOSS = {"input_db": 0, "mzi_db": 0, "output_db": 0}


def fetch(device: Device, query: bytes) -> bytes:
    reply = device.handle(query)
    assert reply is not None
    assert device.handle(b"SYST:ERR?") == b'0,"No error"'
    return reply


def every_shot(device: Device) -> np.ndarray:
    width = int(fetch(device, b"FETC:WIDT?"))
    return np.frombuffer(scpi.unblock(fetch(device, b"FETC:PATT?")), np.uint8).reshape(-1, width)


def histogram(device: Device) -> tuple[np.ndarray, np.ndarray]:
    width = int(fetch(device, b"FETC:WIDT?"))
    return px.decode_histogram(scpi.unblock(fetch(device, b"FETC:HIST?")), width)


def as_dict(patterns: np.ndarray, counts: np.ndarray) -> dict[tuple[int, ...], int]:
    return dict(zip(map(tuple, patterns.tolist()), counts.tolist(), strict=True))


SETUPS = {
    "imperfect sources, one multinomial draw": (quiet_config(sources=IMPERFECT), b""),
    "ideal sources": (quiet_config(sources=IDEAL), b""),
    "photon-number-resolving": (quiet_config(sources=IMPERFECT, detectors={"kind": "pnr"}), b""),
    "two passes with feed-forward": (
        quiet_config(sources=IMPERFECT),
        b"DLIN:ROUT 0,3,3,10;FFOR:MEAS 0;FFOR:RULE 1,3,1.5;",
    ),
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_histogram_is_every_shot_s_pattern_counted(setup):
    config, program_lines = SETUPS[setup]
    device = Device(config, seed=3)
    rng = np.random.default_rng(0)
    program(device, rng.uniform(0, 2 * math.pi, config.modes**2))
    shots = 20_000
    fetch(device, program_lines + f"INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON;RUN:SHOT {shots};SYST:ERR?".encode())
    patterns, counts = histogram(device)
    rows = every_shot(device)
    assert rows.shape[0] == int(fetch(device, b"FETC:SHOT?")) == counts.sum() == shots
    assert len(patterns) > 1
    assert (counts > 0).all()
    expected = Histogram.of(rows)
    assert np.array_equal(patterns, expected.patterns)
    assert np.array_equal(counts, expected.counts)
    totals = [int(x) for x in fetch(device, b"FETC:COUN?").split(b",")]
    assert totals == rows.astype(int).sum(axis=0).tolist()
    # What the executor stores, from the counts, is what it stored from every shot.
    for columns in ([0, 1], [1, 2, 3], list(range(rows.shape[1]))):
        assert np.array_equal(register_histogram(patterns, columns, counts), register_histogram(rows, columns))
    assert np.array_equal(click_totals(patterns, counts), click_totals(rows))


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(0, 300), st.integers(0, 70)),
        elements=st.one_of(st.integers(0, 1), st.integers(0, 255)),
    )
)
def test_rows_counted_as_integers_are_numpy_s_unique_rows(rows):
    counted = Histogram.of(rows)
    if rows.shape[1]:
        patterns, counts = np.unique(rows, axis=0, return_counts=True)
        assert np.array_equal(counted.patterns, patterns)
        assert np.array_equal(counted.counts, counts)
    assert counted.shots == rows.shape[0]
    assert np.array_equal(counted.totals(), rows.astype(np.int64).sum(axis=0))
    in_order = counted.in_order(np.random.default_rng(1))
    assert sorted(map(bytes, in_order)) == sorted(map(bytes, rows))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(1, 2**32 - 1), min_size=0, max_size=20), st.data())
def test_histogram_records_read_back_at_their_width_only(width, counts, data):
    patterns = data.draw(hnp.arrays(np.uint8, (len(counts), width)))
    payload = px.encode_histogram(patterns, np.array(counts, dtype=np.int64))
    back, back_counts = px.decode_histogram(payload, width)
    assert np.array_equal(back, patterns)
    assert back_counts.tolist() == counts
    assert width in px.histogram_widths(payload, sum(counts), range(1, 8))
    if payload:  # a count that does not add up is a garbled reply
        assert px.histogram_widths(payload, sum(counts) + 1, [width]) == []


def _dead_time_one_by_one(readings: np.ndarray, blind: int) -> np.ndarray:
    """Dead time as the detector lives it: shot after shot, each click blinding it for ``blind`` shots."""
    out = readings.copy()
    for column in range(out.shape[1]):
        blind_until = -1
        for shot in range(out.shape[0]):
            if out[shot, column] and shot <= blind_until:
                out[shot, column] = 0
            elif out[shot, column]:
                blind_until = shot + blind
    return out


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 200), st.integers(1, 3)), elements=st.integers(0, 2)),
    st.integers(1, 12),
)
def test_dead_time_drops_the_clicks_a_blind_detector_misses(readings, blind):
    assert np.array_equal(_dead_time(readings, blind), _dead_time_one_by_one(readings, blind))


def dead_time_config(sources: dict[str, float]) -> SimConfig:
    """Two modes, every click seen, and a detector blind for the 2 shots after a click (2.5 us at 1 MHz)."""
    return quiet_config(
        modes=2,
        shot_rate_hz=1e6,
        sources=sources,
        loss=NO_LOSS,
        detectors={"dead_time_s": 2.5e-6, "efficiency": 1.0, "dark_rate_hz": 0},
    )


def test_dead_time_still_depends_on_the_order_of_the_shots():
    # A photon in mode 0 every shot, straight through and always seen: the detector clicks on shots 0, 3, 6, ...
    device = Device(dead_time_config(IDEAL), seed=1)
    program(device, identity_phases(2))
    fetch(device, b"INP:STAT 0,PHOT;SOUR:ENAB ON;RUN:SHOT 1000;SYST:ERR?")
    rows = every_shot(device)
    assert np.flatnonzero(rows[:, 0]).tolist() == list(range(0, 1000, 3))
    assert as_dict(*histogram(device)) == {(1, 0): 334, (0, 0): 666}


def test_dead_time_with_imperfect_sources_draws_the_shots_in_order():
    # From the exact click distribution, but one shot after another: never a click within 2 shots of the last.
    device = Device(dead_time_config(IMPERFECT), seed=2)
    program(device, np.array([math.pi / 2, 0, 0, 0]))  # a balanced coupler
    fetch(device, b"INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON;RUN:SHOT 20000;SYST:ERR?")
    rows = every_shot(device)
    for column in range(2):
        clicks = np.flatnonzero(rows[:, column])
        assert len(clicks) > 2000
        assert np.diff(clicks).min() >= 3
    patterns, counts = histogram(device)
    expected = Histogram.of(rows)
    assert np.array_equal(patterns, expected.patterns)
    assert np.array_equal(counts, expected.counts)


async def test_through_the_hal_a_dead_time_device_counts_what_its_order_allows():
    async with bench(config=dead_time_config(IDEAL)) as b:
        program(b.server.device, identity_phases(2))
        await b.ask(ConfigureInputs(device="chip", inputs=[InputSetting(mode=0, state="photon")]))
        shots = await b.ask(RunShots(device="chip", shots=3000))
        assert not shots.per_shot
        assert as_dict(shots.patterns, shots.counts) == {(1, 0): 1000, (0, 0): 2000}
        in_order = await b.ask(RunShots(device="chip", shots=3000, per_shot=True))
        assert in_order.per_shot
        assert in_order.patterns[:6, 0].tolist() == [1, 0, 0, 1, 0, 0]


async def test_records_that_read_at_two_widths_are_settled_by_asking_the_device(monkeypatch):
    fits = drivers._replies.histogram_widths

    def ambiguous(data: bytes, shots: int, widths: object) -> list[int]:
        return [4, 8] if fits(data, shots, widths) else []  # type: ignore[arg-type]

    monkeypatch.setattr(drivers._replies, "histogram_widths", ambiguous)
    async with open_driver("sim://?seed=1&modes=4") as driver:
        device = driver.endpoint.server.device  # type: ignore[attr-defined]
        sent: list[bytes] = []
        handle = device.handle
        monkeypatch.setattr(device, "handle", lambda message, *a, **k: sent.append(message) or handle(message, *a, **k))
        await driver.configure_inputs([InputSetting(mode=0, state="photon")], clear=True, sources_on=True)
        shots = await driver.run_shots(500)
        assert sent[-2].startswith(b"RUN:SHOT 500;:FETC:HIST?")
        assert sent[-1].startswith(b"FETC:WIDT?")
        assert shots.width == 4
        assert shots.patterns.shape[1] == 4
        assert int(shots.counts.sum()) == 500
