"""Exact output distributions and 10,000-shot sampling: awen's simulator against a peer.

For (n photons, m modes) = (2, 8), (4, 16), (6, 12), (8, 16), on the same
Haar-random unitaries in one run:

* awen: `sim.output_probabilities` (arrays; the Fock-space tables for each
  size are built once, as Perceval's backend builds its own) and
  `sim.sample_ideal` for 10,000 shots;
* Perceval's SLOS back end (``pip install -e '.[bench]'``):
  ``SLOSBackend.all_prob`` and ``Sampler(Processor("SLOS", ...)).samples``,
  and the largest difference between the two sets of probabilities;
* without Perceval: a naive baseline, one permanent per output pattern
  (Glynn's formula, vectorised), up to (6, 12).

Ratios are baseline time / awen time: above 1 means awen is faster. The
issue's target: at least as fast as SLOS on every size, probabilities equal to
1e-10.

    python benchmarks/simulator.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import sim
from sim._fock import layers

SIZES = [(2, 8), (4, 16), (6, 12), (8, 16)]
SHOTS = 10_000


def haar(m: int, rng: np.random.Generator) -> np.ndarray:
    z = (rng.normal(size=(m, m)) + 1j * rng.normal(size=(m, m))) / math.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diag(r)
    result: np.ndarray = q * (d / abs(d))
    return result


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_probabilities(u: np.ndarray, n: int) -> np.ndarray:
    """One permanent per output pattern: Glynn's formula over all patterns at once."""
    m = u.shape[0]
    columns = u[:, :n]
    patterns = list(itertools.combinations_with_replacement(range(m), n))
    rows = columns[np.array(patterns)]  # (N, n, n): each pattern's rows
    signs = np.array([[1, *s] for s in itertools.product((1, -1), repeat=n - 1)], dtype=float)
    sums = np.einsum("dr,prj->pdj", signs, rows)
    perms = np.einsum("d,pd->p", signs.prod(axis=1), sums.prod(axis=2)) / 2 ** (n - 1)
    factorials = np.array([math.prod(math.factorial(p.count(j)) for j in set(p)) for p in patterns])
    probabilities: np.ndarray = np.abs(perms) ** 2 / factorials
    return probabilities


def perceval_or_none() -> Any:
    try:
        import perceval
    except ImportError:
        return None
    return perceval


def against_perceval(
    pcvl: Any, u: np.ndarray, photons: tuple[int, ...], rng: np.random.Generator, repeat: int
) -> tuple[float, float, float]:
    """Perceval's SLOS on the same unitary: (exact time, sampling time, largest probability difference)."""
    from perceval.algorithm import Sampler
    from perceval.backends import SLOSBackend

    m = len(photons)
    states, probabilities = sim.output_probabilities(u, photons)
    start_state = pcvl.BasicState(list(photons))
    backend = SLOSBackend()
    backend.set_circuit(pcvl.Unitary(pcvl.Matrix(haar(m, rng))))
    backend.set_input_state(start_state)
    backend.all_prob()  # warm: SLOS builds its tree once per size

    def slos_exact() -> Any:
        backend.set_circuit(pcvl.Unitary(pcvl.Matrix(u)))
        backend.set_input_state(start_state)
        return backend.all_prob()

    def slos_sampling(unitary: np.ndarray = u) -> Any:
        processor = pcvl.Processor("SLOS", pcvl.Unitary(pcvl.Matrix(unitary)))
        processor.with_input(start_state)
        return Sampler(processor).samples(SHOTS)

    slos_sampling(haar(m, rng))  # warm
    exact = timed(slos_exact, repeat)
    sampling = timed(slos_sampling, repeat)
    backend.set_circuit(pcvl.Unitary(pcvl.Matrix(u)))
    backend.set_input_state(start_state)
    theirs = {tuple(state): p for state, p in backend.prob_distribution().items()}
    difference = max(abs(theirs.get(tuple(s), 0.0) - p) for s, p in zip(states.tolist(), probabilities, strict=True))
    return exact, sampling, difference


def against_naive(u: np.ndarray, n: int, repeat: int) -> tuple[float, float, float]:
    """One permanent per output pattern: (exact time, no sampling, largest probability difference)."""
    m = len(u)
    photons = (1,) * n + (0,) * (m - n)
    states, probabilities = sim.output_probabilities(u, photons)
    exact = timed(lambda: naive_probabilities(u, n), repeat)
    naive = naive_probabilities(u, n)
    order = {tuple(p): i for i, p in enumerate(itertools.combinations_with_replacement(range(m), n))}
    as_rows = [tuple(j for j, k in enumerate(s) for _ in range(k)) for s in states.tolist()]
    return exact, math.nan, float(np.max(np.abs(naive[[order[r] for r in as_rows]] - probabilities)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pcvl = perceval_or_none()
    rng = np.random.default_rng(2026)
    print(f"awen simulator benchmark: exact distributions and {SHOTS}-shot sampling, medians of {args.repeat}")
    if pcvl is not None:
        print(f"baseline: Perceval {pcvl.__version__} SLOS back end, same unitaries, same process")
    else:
        print("baseline: naive (one permanent per pattern); install the bench extra to compare with Perceval's SLOS")
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}")
    print()
    header = (
        f"{'(n, m)':<9}{'patterns':>9}{'awen exact':>12}{'baseline':>11}{'ratio':>9}"
        f"{'awen 10k':>11}{'baseline':>11}{'ratio':>9}{'max |dp|':>11}"
    )
    print(header)
    print("-" * len(header))
    for n, m in SIZES:
        photons = (1,) * n + (0,) * (m - n)
        u = haar(m, rng)
        layers.cache_clear()
        start = time.perf_counter()
        layers(m, n)
        build = time.perf_counter() - start
        sim.output_probabilities(haar(m, rng), photons)  # warm: tables, numpy
        repeat = max(1, args.repeat if n < 8 else min(args.repeat, 3))

        def exact(u: np.ndarray = u, photons: tuple[int, ...] = photons) -> object:
            return sim.output_probabilities(u, photons)

        def sampling(u: np.ndarray = u, photons: tuple[int, ...] = photons) -> object:
            return sim.sample_ideal(u, photons, SHOTS, rng)

        ours = timed(exact, repeat)
        ours_sampling = timed(sampling, repeat)
        patterns = len(sim.output_probabilities(u, photons)[0])
        if pcvl is not None:
            baseline, baseline_sampling, difference = against_perceval(pcvl, u, photons, rng, repeat)
        elif n <= 6:
            baseline, baseline_sampling, difference = against_naive(u, n, repeat)
        else:
            baseline = baseline_sampling = difference = math.nan
        print(
            f"{f'({n}, {m})':<9}{patterns:>9}{ours * 1e3:>10.2f}ms{baseline * 1e3:>9.2f}ms{baseline / ours:>8.2f}x"
            f"{ours_sampling * 1e3:>9.2f}ms{baseline_sampling * 1e3:>9.2f}ms{baseline_sampling / ours_sampling:>8.2f}x"
            f"{difference:>11.1e}"
        )
        print(f"{'':<9}(awen's tables for this size: built once in {build * 1e3:.0f} ms)")
    print()
    print("ratio = baseline time / awen time (above 1: awen is faster). Target: >= 1 against SLOS, |dp| <= 1e-10.")


if __name__ == "__main__":
    main()
