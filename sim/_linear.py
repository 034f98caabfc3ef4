"""Unitaries of the Clements mesh, and the decomposition back to mesh phases.

`mesh_unitary` builds the m x m transfer matrix from the m**2 heater phases
(numbered as in `protocol.mesh`); `clements` finds phases that give a
requested unitary (Clements et al., Optica 3, 1460 (2016)): null the
unitary's lower triangle by MZIs applied alternately from the right and the
left, then move the left ones through the remaining diagonal.
"""

from __future__ import annotations

import math

import numpy as np

from protocol.mesh import MeshLayout, clements_layout

TWO_PI = 2 * math.pi
_EPS = 1e-14


def mzi(theta: float, phi: float) -> np.ndarray:
    """The 2x2 transfer matrix of one MZI (see `protocol.mesh`)."""
    s, c = math.sin(theta / 2), math.cos(theta / 2)
    e = complex(math.cos(phi), math.sin(phi))
    g = 1j * complex(math.cos(theta / 2), math.sin(theta / 2))
    return g * np.array([[e * s, c], [e * c, -s]], dtype=np.complex128)


def _layout(modes: int | None, phases: np.ndarray) -> MeshLayout:
    if modes is None:
        modes = math.isqrt(len(phases))
    if len(phases) != modes * modes:
        raise ValueError(f"a {modes}-mode mesh has {modes * modes} phases, got {len(phases)}")
    return clements_layout(modes)


def mesh_unitary(phases: np.ndarray, modes: int | None = None) -> np.ndarray:
    """The transfer matrix of the mesh with these heater phases (radians, m**2 of them)."""
    phases = np.asarray(phases, dtype=np.float64)
    layout = _layout(modes, phases)
    m = layout.modes
    u = np.eye(m, dtype=np.complex128)
    for block in layout.mzis:
        top = block.top
        u[top : top + 2, :] = mzi(phases[block.theta_heater], phases[block.phi_heater]) @ u[top : top + 2, :]
    out = phases[2 * layout.mzi_count :]
    result: np.ndarray = np.exp(1j * out)[:, None] * u
    return result


def _split(w: np.ndarray) -> tuple[complex, complex, float, float]:
    """(x, y, theta, phi) with w == diag(x, y) @ mzi(theta, phi)."""
    s, c = abs(w[0, 0]), abs(w[0, 1])
    theta = 2 * math.atan2(s, c)
    g = 1j * complex(math.cos(theta / 2), math.sin(theta / 2))
    norm_s, norm_c = math.sin(theta / 2), math.cos(theta / 2)
    phi = float(np.angle(w[0, 0]) - np.angle(w[0, 1])) if s > _EPS and c > _EPS else 0.0
    e = complex(math.cos(phi), math.sin(phi))
    x = w[0, 1] / (g * norm_c) if c > _EPS else w[0, 0] / (g * e * norm_s)
    y = -w[1, 1] / (g * norm_s) if s > _EPS else w[1, 0] / (g * e * norm_c)
    return complex(x), complex(y), theta, phi % TWO_PI


def clements(unitary: np.ndarray) -> np.ndarray:
    """Mesh phases (m**2, numbered as in `protocol.mesh`) whose `mesh_unitary` is ``unitary``.

    Raises:
        ValueError: the matrix is not square and unitary (to 1e-8).
    """
    u = np.array(unitary, dtype=np.complex128)
    m = u.shape[0]
    if u.ndim != 2 or u.shape[1] != m:
        raise ValueError(f"expected a square matrix, got shape {u.shape}")
    error = np.abs(u.conj().T @ u - np.eye(m)).max()
    if error > 1e-8:
        raise ValueError(f"the matrix is not unitary: |U^dagger U - 1| reaches {error:.2e}")
    right: list[tuple[int, float, float]] = []  # applied first, in this order
    left: list[tuple[int, float, float]] = []
    for i in range(m - 1):
        if i % 2 == 0:
            for j in range(i + 1):
                r, c = m - 1 - j, i - j
                a, b = u[r, c], u[r, c + 1]
                theta = 2 * math.atan2(abs(b), abs(a))
                phi = float(np.angle(a) - np.angle(-b)) % TWO_PI
                u[:, c : c + 2] = u[:, c : c + 2] @ mzi(theta, phi).conj().T
                right.append((c, theta, phi))
        else:
            for j in range(1, i + 2):
                r, c = m + j - i - 2, j - 1
                a, b = u[r - 1, c], u[r, c]
                theta = 2 * math.atan2(abs(a), abs(b))
                phi = float(np.angle(b) - np.angle(a)) % TWO_PI
                u[r - 1 : r + 1, :] = mzi(theta, phi) @ u[r - 1 : r + 1, :]
                left.append((r - 1, theta, phi))
    diagonal = np.diag(u).copy()
    moved: list[tuple[int, float, float]] = []
    for top, theta, phi in reversed(left):
        w = mzi(theta, phi).conj().T @ np.diag(diagonal[top : top + 2])
        x, y, theta2, phi2 = _split(w)
        diagonal[top], diagonal[top + 1] = x, y
        moved.append((top, theta2, phi2))
    # Application order: the right ones, then the moved left ones (the one
    # moved first acts first), then the output phases. Place each MZI in the earliest column
    # its modes allow; the Clements order fills the rectangle exactly.
    layout = clements_layout(m)
    phases = np.zeros(m * m)
    free = [0] * m
    for top, theta, phi in [*right, *moved]:
        column = max(free[top], free[top + 1])
        if column % 2 != top % 2:
            column += 1
        block = layout.at(column, top)
        phases[block.theta_heater], phases[block.phi_heater] = theta, phi
        free[top] = free[top + 1] = column + 1
    phases[2 * layout.mzi_count :] = np.angle(diagonal) % TWO_PI
    return phases
