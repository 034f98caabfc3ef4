"""Our experiments on the chip: CI runs them on awen's simulated twin, `--awen-connect` on the lab."""

import uuid

import numpy as np
from lakeside import (
    coincidence_ratio,
    fit_visibility,
    hom,
    hom_visibility,
    one_click,
    photon_router,
    random_unitary,
    router_distribution,
    run_sweep,
    splitter_sweep,
)

from awen import Lab
from awen.testing import Bench, assert_distribution, assert_figure

ACCEPTANCE = 0.8
"""The HOM visibility below which we do not take data on a chip (our group's rule)."""


def test_the_hom_dip_is_deep_enough_and_our_analysis_agrees_with_awen(awen_client: Lab) -> None:
    result = awen_client.submit(hom(shots=20_000)).wait(timeout=60)
    assert result.shots == 20_000
    assert int(result.counts("hom").sum()) == 20_000
    ours, sigma = hom_visibility(result.counts("hom"), result.counts("reference"))
    theirs = result.figures["visibility"]
    assert ours == theirs["value"]  # the same counts, the same formula
    assert ours - 3 * sigma > ACCEPTANCE, f"visibility {ours:.3f} +- {sigma:.3f}"
    # Our sources are not perfect; the calibration measured them, and the dip is what it predicts.
    assert_figure(ours, theirs["calibrated"], float(np.hypot(sigma, theirs["calibrated_sigma"])), name="visibility")


def test_the_splitter_sweep_fits_the_visibility_the_dip_measures(awen_client: Lab) -> None:
    points = splitter_sweep(points=9, shots=3000)
    results = run_sweep(awen_client, f"sweep-{uuid.uuid4()}", [circuit for _, circuit in points])
    thetas, ratios, sigmas = [], [], []
    for (theta, _), result in zip(points, results, strict=True):
        ratio, sigma = coincidence_ratio(result.counts("hom"), result.counts("reference"))
        thetas.append(theta)
        ratios.append(ratio)
        sigmas.append(sigma)
    fitted, fit_sigma = fit_visibility(thetas, ratios, sigmas)
    dip = results[len(results) // 2].figures["visibility"]  # theta = pi/4: the dip itself
    assert_figure(fitted, dip["value"], float(np.hypot(fit_sigma, dip["sigma"])), name="fitted visibility")


def test_one_photon_goes_where_the_unitary_sends_it(awen_lab: Bench, awen_client: Lab) -> None:
    unitary = random_unitary(awen_lab.modes or 4, seed=11)
    result = awen_client.submit(photon_router(unitary, shots=3000)).wait(timeout=60)
    clicks = one_click(result.patterns("out"))
    assert sum(clicks.values()) > 500  # a photon arrives in a good fraction of the shots
    assert_distribution(clicks, router_distribution(unitary))
