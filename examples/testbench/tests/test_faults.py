"""What our lab script does when the chip misbehaves: the simulated chip misbehaves on purpose here.

These tests skip against the real lab (faults are injected only into the simulated chip).
"""

import uuid

import numpy as np
import pytest
from lakeside import ChipInterlocked, hom, hom_visibility, run_sweep, splitter_sweep

from awen import Lab
from awen.testing import SimControl, assert_figure


def test_an_interlock_stops_the_sweep_and_names_the_point(awen_client: Lab, awen_faults: SimControl) -> None:
    awen_faults.interlock()
    with pytest.raises(ChipInterlocked, match=r"point 0 failed:.*interlock"):
        run_sweep(awen_client, f"faults-{uuid.uuid4()}", [hom(shots=500)])
    # What the operator does: remove the cause, reset the interlock, run the sweep again.
    awen_faults.clear()
    awen_client.reset_interlock()
    [result] = run_sweep(awen_client, f"faults-{uuid.uuid4()}", [hom(shots=500)])
    assert int(result.counts("hom").sum()) == 500


def test_a_dropped_link_costs_nothing(awen_client: Lab, awen_faults: SimControl) -> None:
    awen_faults.fault("close", nth=3)  # the chip's link drops on the third message from now
    points = splitter_sweep(points=3, shots=2000)
    results = run_sweep(awen_client, f"faults-{uuid.uuid4()}", [circuit for _, circuit in points])
    assert [int(r.counts("hom").sum()) for r in results] == [2000, 2000, 2000]
    assert all(r.state == "completed" and not r.partial for r in results)


def test_after_a_week_of_drift_a_new_calibration_brings_the_dip_back(awen_client: Lab, awen_faults: SimControl) -> None:
    before = awen_client.calibration_status().version
    awen_faults.drift(hours=24 * 7)
    calibrated = awen_client.calibrate()
    assert calibrated.version > before
    result = awen_client.submit(hom(shots=20_000)).wait(timeout=60)
    value, sigma = hom_visibility(result.counts("hom"), result.counts("reference"))
    # The sources drifted over the week too: the new calibration measured them, and the dip is what
    # it predicts (with stale heater phases it would not be).
    predicted = result.figures["visibility"]
    assert result.calibration == calibrated.version
    combined = float(np.hypot(sigma, predicted["calibrated_sigma"]))
    assert_figure(value, predicted["calibrated"], combined, name="visibility")
