"""A phase's linear optics: its gates multiplied into one unitary per pass, then into mesh phases.

`compose` multiplies every block's gates (a block: one component's gates in
one pass, on its logical modes) for all blocks at once; `decompose` turns
each phase's block-diagonal unitary into the mesh's heater phases (Clements,
on the smallest top corner of the mesh that holds it, `protocol.mesh`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.circuit import BeamSplitter, Op, PhaseShift, UnitaryOp, gate_matrix
from protocol.mesh import clements_many, embed_phases

Block = tuple[list[int], list[tuple[int, Any, Op]], int]
"""(logical modes, a component's gates as (pass, modes, op), the pass whose gates make this block)."""

_KIND_PS, _KIND_BS, _KIND_MZI = 0, 1, 2


def compose(blocks: list[Block]) -> list[np.ndarray]:
    """Each block's unitary, the blocks of one size at a time (`_compose_alike`).

    One array for all blocks would be padded to the widest: thousands of
    one-mode blocks beside one of 32 modes would take blocks x 33 x 32 complex
    numbers. By size, the arrays hold what the blocks need, (k + 1) x k each.
    """
    by_size: dict[int, list[int]] = {}
    for b, (modes, _, _) in enumerate(blocks):
        by_size.setdefault(len(modes), []).append(b)
    results: list[np.ndarray] = [np.empty(0)] * len(blocks)
    for members in by_size.values():
        for b, u in zip(members, _compose_alike([blocks[b] for b in members]), strict=True):
            results[b] = u
    return results


def _compose_alike(blocks: list[Block]) -> list[np.ndarray]:
    """Each block's unitary (its pass's gates on its logical modes, in order: U <- G U), all at once.

    A block is (logical modes, gates, pass). Every gate gets a depth (one more
    than the last gate on either of its modes); gates of equal depth act on
    different rows, so all blocks' gates of one depth are applied together in
    a few numpy calls. Work in Python is a few list appends per gate; the
    arithmetic is vectorised over blocks and over the gates of a layer.
    """
    if not blocks:
        return []
    kmax = max(len(modes) for modes, _, _ in blocks)
    u = np.zeros((len(blocks), kmax + 1, kmax), dtype=np.complex128)
    layers = _Layers(dummy=kmax)  # a spare row: a phase shift is a 2-row update whose second row stays zero
    general: dict[int, list[tuple[int, Any, Op]]] = {}
    for b, (modes, gates, stage) in enumerate(blocks):
        k = len(modes)
        u[b, np.arange(k), np.arange(k)] = 1.0
        if any(type(op) is UnitaryOp for s_, _, op in gates if s_ == stage):
            general[b] = gates
            continue
        layers.add_block(b, modes, gates, stage)
    layers.apply(u)
    results = []
    for b, (modes, gates, stage) in enumerate(blocks):
        k = len(modes)
        if b in general:
            results.append(_compose_general(gates, stage, modes))
        else:
            results.append(u[b, :k, :k].copy())
    return results


class _Layers:
    """The two-row updates of every block's gates, each at its depth, applied layer by layer."""

    def __init__(self, dummy: int) -> None:
        self.dummy = dummy
        self.blk: list[int] = []
        self.rows_a: list[int] = []
        self.rows_b: list[int] = []
        self.kinds: list[int] = []
        self.thetas: list[float] = []
        self.phis: list[float] = []
        self.depths: list[int] = []

    def add_block(self, b: int, modes: list[int], gates: list[tuple[int, Any, Op]], stage: int) -> None:
        at = {q: i for i, q in enumerate(modes)}
        depth = [0] * (len(modes) + 1)
        blk, rows_a, rows_b, kinds = self.blk, self.rows_a, self.rows_b, self.kinds
        thetas, phis, depths = self.thetas, self.phis, self.depths
        for gate_stage, gate_modes, op in gates:
            if gate_stage != stage:
                continue
            kind = type(op)
            i = at[gate_modes[0]]
            if kind is PhaseShift:
                d = depth[i] + 1
                depth[i] = d
                rows_b.append(self.dummy)
                kinds.append(_KIND_PS)
                thetas.append(0.0)
            else:
                j = at[gate_modes[1]]
                d = max(depth[i], depth[j]) + 1
                depth[i] = depth[j] = d
                rows_b.append(j)
                kinds.append(_KIND_BS if kind is BeamSplitter else _KIND_MZI)
                thetas.append(op.theta)  # type: ignore[union-attr]
            blk.append(b)
            rows_a.append(i)
            phis.append(op.phi)  # type: ignore[union-attr]
            depths.append(d)

    def apply(self, u: np.ndarray) -> None:
        """U <- G U for every gate, the gates of one depth (on different rows) together."""
        if not self.blk:
            return
        kind_a = np.array(self.kinds)
        theta = np.array(self.thetas)
        e = np.exp(1j * np.array(self.phis))
        m00 = np.empty(len(kind_a), dtype=np.complex128)
        m01, m10, m11 = np.empty_like(m00), np.empty_like(m00), np.empty_like(m00)
        ps, bs, mz = kind_a == _KIND_PS, kind_a == _KIND_BS, kind_a == _KIND_MZI
        m00[ps], m01[ps], m10[ps], m11[ps] = e[ps], 0, 0, 1
        c, s = np.cos(theta[bs]), np.sin(theta[bs])
        m00[bs], m01[bs], m10[bs], m11[bs] = c, 1j * s / e[bs], 1j * s * e[bs], c
        half = theta[mz] / 2
        g = 1j * np.exp(1j * half)
        sh, ch = np.sin(half), np.cos(half)
        m00[mz], m01[mz], m10[mz], m11[mz] = g * e[mz] * sh, g * ch, g * e[mz] * ch, -g * sh
        depth_a = np.array(self.depths)
        order = np.argsort(depth_a, kind="stable")
        cuts = np.flatnonzero(np.diff(depth_a[order])) + 1
        blk_a, ra_a, rb_a = np.array(self.blk), np.array(self.rows_a), np.array(self.rows_b)
        for layer in np.split(order, cuts):
            bl, a, b_ = blk_a[layer], ra_a[layer], rb_a[layer]
            top, bottom = u[bl, a], u[bl, b_]
            u[bl, a] = m00[layer, None] * top + m01[layer, None] * bottom
            u[bl, b_] = m10[layer, None] * top + m11[layer, None] * bottom


def _compose_general(gates: list[tuple[int, Any, Op]], stage: int, modes: list[int]) -> np.ndarray:
    """One block with arbitrary unitaries among its gates, gate by gate."""
    at = {q: i for i, q in enumerate(modes)}
    u = np.eye(len(modes), dtype=np.complex128)
    for gate_stage, gate_modes, op in gates:
        if gate_stage == stage:
            index = [at[q] for q in gate_modes]
            u[index, :] = gate_matrix(op) @ u[index, :]
    return u


def decompose(unitaries: list[np.ndarray], modes: int) -> list[list[float]]:
    """Mesh phases for each phase's unitary: the same ones decomposed once, the same sizes together."""
    unique: dict[bytes, int] = {}
    for u in unitaries:
        unique.setdefault(u.tobytes() + bytes([u.shape[0]]), len(unique))
    by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
    seen: set[int] = set()
    for u in unitaries:
        k = unique[u.tobytes() + bytes([u.shape[0]])]
        if k not in seen:
            seen.add(k)
            by_size.setdefault(u.shape[0], []).append((k, u))
    decomposed: dict[int, list[float]] = {}
    for group in by_size.values():
        for (k, _), block in zip(group, clements_many(np.array([u for _, u in group])), strict=True):
            decomposed[k] = embed_phases(block, modes).tolist()
    return [decomposed[unique[u.tobytes() + bytes([u.shape[0]])]] for u in unitaries]
