"""Imperfect sources (decision 0017): awen's exact click distribution against Perceval, in one run.

Every source is ``Source(emission_probability=0.9, multiphoton_component=0.02,
indistinguishability=0.92)`` (Perceval's names; `sim.SourceModel` in awen), with
threshold detectors, on the same Haar-random unitaries:

* agreement: small cases that Perceval computes at precision 1e-20 (its default,
  1e-6, truncates and renormalises): the largest difference over the click
  patterns. Target: 1e-10;
* speed: (4, 16) and (6, 12), awen exact against Perceval at its default
  precision (what a user runs), and the probability Perceval leaves out there;
* the ideal case: `sim.click_distribution` with ideal sources against the
  permanent distribution awen already had (`sim.output_probabilities`),
  thresholded, so that the new path costs nothing when the sources are ideal
  (the device keeps the old one for them).

Without Perceval (``pip install -e '.[bench]'``) the baseline is a brute force:
every source's state enumerated, each wavepacket's photons by permanents,
convolved, detected.

    python benchmarks/sources.py [--repeat 3]
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import functools
import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np

import sim
from benchmarks.simulator import haar, perceval_or_none, timed

SOURCE = {"brightness": 0.9, "g2": 0.02, "indistinguishability": 0.92}
AGREEMENT = [(2, 2), (2, 4), (3, 5)]
SPEED = [(4, 16), (6, 12)]


def perceval_clicks(pcvl: Any, u: np.ndarray, n: int, precision: float | None) -> tuple[np.ndarray, float]:
    """Perceval's threshold click distribution (bit j: mode j) and the probability it left out."""
    from perceval import BasicState, Detector, Source
    from perceval.backends import SLOSBackend
    from perceval.simulators import Simulator

    m = u.shape[0]
    source = Source(
        emission_probability=SOURCE["brightness"],
        multiphoton_component=SOURCE["g2"],
        indistinguishability=SOURCE["indistinguishability"],
    )
    simulator = Simulator(SLOSBackend())
    simulator.set_circuit(pcvl.Unitary(pcvl.Matrix(u)))
    simulator.set_min_detected_photons_filter(0)
    if precision is not None:
        simulator.set_precision(precision)
    found = simulator.probs_svd((source, BasicState([1] * n + [0] * (m - n))), detectors=[Detector.threshold()] * m)
    p = np.zeros(1 << m)
    for state, probability in found["results"].items():
        p[sum(1 << j for j in range(m) if state[j])] += probability
    return p, 1.0 - float(found.get("global_perf", 1.0))


def brute_force(u: np.ndarray, n: int) -> np.ndarray:
    """Every source's state, each wavepacket by permanents, convolved, thresholded (no loss, no dark counts)."""
    m = u.shape[0]
    model = sim.SourceModel(**SOURCE)
    p0, p1, p2 = model.emission()
    s = math.sqrt(model.indistinguishability)
    states = [(p0, 0, 0), (s * p1, 1, 0), ((1 - s) * p1, 0, 1), (s * p2, 1, 1), ((1 - s) * p2, 0, 2)]
    clicks = np.zeros(1 << m)
    for config in itertools.product(states, repeat=n):
        weight = math.prod(c[0] for c in config)
        shared = [0] * m
        private: list[int] = []
        for mode, (_, sh, pr) in enumerate(config):
            shared[mode] += sh
            private += [mode] * pr
        fock: dict[tuple[int, ...], float] = {(0,) * m: 1.0}
        for group in [shared] + [[1 if j == mode else 0 for j in range(m)] for mode in private]:
            if not any(group):
                continue
            outs, probs = sim.output_probabilities(u, group)
            merged: dict[tuple[int, ...], float] = defaultdict(float)
            for a, pa in fock.items():
                for b, pb in zip(outs.tolist(), probs, strict=True):
                    merged[tuple(x + y for x, y in zip(a, b, strict=True))] += pa * pb
            fock = dict(merged)
        for state, prob in fock.items():
            clicks[sum(1 << j for j, k in enumerate(state) if k)] += weight * prob
    return clicks


def thresholded_ideal(u: np.ndarray, n: int) -> np.ndarray:
    m = u.shape[0]
    outs, probs = sim.output_probabilities(u, [1] * n + [0] * (m - n))
    keys = (outs > 0).astype(np.int64) @ (1 << np.arange(m))
    return np.bincount(keys, weights=probs, minlength=1 << m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pcvl = perceval_or_none()
    rng = np.random.default_rng(2026)
    model = sim.SourceModel(**SOURCE)
    print("imperfect sources: brightness 0.9, g2 0.02, indistinguishability 0.92; threshold detectors")
    print(f"peer: Perceval {pcvl.__version__}" if pcvl is not None else "peer: a brute force (no Perceval installed)")
    print()
    print(f"{'(n, m)':<9}{'awen exact':>12}{'peer':>14}{'ratio':>9}{'max |dp|':>11}{'peer left out':>15}")
    for n, m in AGREEMENT + SPEED:
        u = haar(m, rng)
        ours = sim.click_distribution(u, list(range(n)), model)
        awen_s = timed(functools.partial(sim.click_distribution, u, list(range(n)), model), args.repeat)
        small = (n, m) in AGREEMENT
        if pcvl is not None:
            precision = 1e-20 if small else None
            theirs, left_out = perceval_clicks(pcvl, u, n, precision)
            peer_s = timed(functools.partial(perceval_clicks, pcvl, u, n, precision), args.repeat)
            label = "(1e-20)" if small else "(default)"
        elif small:
            theirs, left_out = brute_force(u, n), 0.0
            peer_s = timed(functools.partial(brute_force, u, n), args.repeat)
            label = "(brute)"
        else:
            print(f"{f'({n}, {m})':<9}{awen_s * 1e3:>10.1f}ms{'-':>14}")
            continue
        difference = float(np.max(np.abs(ours - theirs)))
        print(
            f"{f'({n}, {m})':<9}{awen_s * 1e3:>10.1f}ms{peer_s * 1e3:>8.1f}ms{label:>6}{peer_s / awen_s:>8.2f}x"
            f"{difference:>11.1e}{left_out:>15.1e}"
        )
    print()
    print("the ideal case, awen's new path against its permanent distribution (thresholded):")
    for n, m in SPEED:
        u = haar(m, rng)
        new = timed(functools.partial(sim.click_distribution, u, list(range(n))), args.repeat)
        old = timed(functools.partial(thresholded_ideal, u, n), args.repeat)
        same = float(np.max(np.abs(sim.click_distribution(u, list(range(n))) - thresholded_ideal(u, n))))
        print(f"  ({n}, {m}): {new * 1e3:.1f} ms against {old * 1e3:.1f} ms, max |dp| {same:.1e}")
    print("  (the device keeps the permanent path for ideal sources: the ideal case is no slower than before)")
    print()
    print("ratio = peer time / awen time (above 1: awen is faster). Targets: |dp| <= 1e-10; >= 1 on (4,16), (6,12).")


if __name__ == "__main__":
    main()
