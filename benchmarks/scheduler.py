"""Planning circuits of 1,000, 10,000 and 100,000 operations on a 32-mode device.

Each circuit is a sequence of experiments (rounds), as a long lab job is: photons
into 4 to 32 modes, a few hundred beam splitters, phase shifts and MZIs,
photons stored in the two delay lines and brought back, a feed-forward phase
on a loaded photon, and measurements. For each size, in the same process:

* awen: `compile_circuit`, the whole plan (validation, placement, Clements
  decomposition of every phase, deadlines, branches), best of 3;
* baseline: networkx building the same operation dependency graph and
  layering it topologically (`topological_generations`), best of 3.

Targets (issue 6): 100,000 operations planned in under 2 s; time growing no
faster than linearly (the 10x larger circuit at most 12x longer).

    python benchmarks/scheduler.py [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import time

import networkx as nx

from actors.scheduler import Limits, analyse, compile_circuit
from protocol.circuit import Circuit, CircuitBuilder
from sim import parse_config

DEVICE = parse_config({"modes": 32}).description()


def lab_circuit(ops: int, seed: int = 1) -> Circuit:
    """About ``ops`` operations: rounds of state preparation, linear optics, delay lines, feed-forward, detection."""
    rng = random.Random(seed)
    b = CircuitBuilder(32, shots=1000)
    count = 0
    round_ = 0
    while count < ops:
        width = rng.choice([4, 6, 8, 12, 16, 24, 32])
        modes = [0, *rng.sample(range(1, 32), width - 1)]  # mode 0 again: a new shot structure (round)
        first, spare = modes[: width // 2 + 1], modes[width // 2 + 1 :]
        for q in first:
            b.input(q)
        count += len(first)
        gates = min(ops - count, rng.randint(100, 600))
        for _ in range(max(0, gates)):
            kind = rng.random()
            a, c = rng.sample(first, 2)
            if kind < 0.5:
                b.bs(a, c, rng.uniform(0, math.pi))
            elif kind < 0.8:
                b.mzi(a, c, rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi))
            else:
                b.ps(a, rng.uniform(0, 2 * math.pi))
        count += max(0, gates)
        stored = first[1:3] if spare and len(first) > 3 else []
        for i, q in enumerate(stored):
            b.store(q, f"m{round_}_{i}")
        measured = [q for q in first if q not in stored]
        b.measure(measured[:3], f"a{round_}")
        if measured[3:]:
            b.measure(measured[3:], f"rest{round_}")
        b.wait(300)
        for i, target in enumerate(spare[: len(stored)]):
            b.load(f"m{round_}_{i}", target)
        if stored:
            b.if_(f"a{round_}", 1).ps(spare[0], math.pi).end()
            b.measure(spare[: len(stored)], f"b{round_}")
        count += 2 * len(stored) + 4 + len(stored)
        round_ += 1
    return b.build()


def best_of(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return min(times)


def networkx_layering(predecessors: list[list[int]]) -> int:
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(predecessors)))
    graph.add_edges_from((p, i) for i, preds in enumerate(predecessors) for p in preds)
    return sum(1 for _ in nx.topological_generations(graph))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    args = parser.parse_args()
    print("awen scheduler benchmark: plan a circuit on a 32-mode device (best of 3), next to networkx layering")
    print("the same dependency graph")
    print()
    print(f"  {'ops':>8} {'phases':>7} {'edges':>8} {'awen plan':>11} {'networkx':>10} {'ratio':>7} {'us/op':>7}")
    results = []
    for size in args.sizes:
        circuit = lab_circuit(size)
        analysis = analyse(circuit, DEVICE, Limits())
        assert not analysis.problems, analysis.problems[:3]
        n = len(analysis.predecessors)
        plan = compile_circuit(circuit, DEVICE)
        awen_s = best_of(lambda c=circuit: compile_circuit(c, DEVICE))
        nx_s = best_of(lambda p=analysis.predecessors: networkx_layering(p))
        results.append((n, awen_s))
        print(
            f"  {n:>8,} {plan.metrics.phases:>7} {analysis.edges:>8,} {awen_s:>10.3f}s {nx_s:>9.3f}s "
            f"{awen_s / nx_s:>6.2f}x {awen_s / n * 1e6:>7.1f}"
        )
    print()
    for (n1, t1), (n2, t2) in itertools.pairwise(results):
        print(f"  {n2 / n1:.0f}x the operations took {t2 / t1:.1f}x as long (target <= 12x)")
    largest_n, largest_t = results[-1]
    if largest_n >= 100_000:
        print(f"  {largest_n:,} operations planned in {largest_t:.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()
