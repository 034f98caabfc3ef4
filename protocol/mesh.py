"""The Clements mesh: where every MZI sits and how heaters are numbered.

Both sides of the device wire need this: the simulator to build the chip, the
HAL and calibration to name heaters, the scheduler to turn unitaries into
heater phases. A mesh of m modes has m columns; column c holds an MZI on modes
(n, n+1) for every n with n = c (mod 2) and n + 1 < m, m(m-1)/2 MZIs in all.

Heater numbering (m**2 heaters):

* MZI k (counted column by column, top to bottom) has its internal phase
  shifter theta at heater 2k and its external phase shifter phi at 2k + 1.
  The external one sits on the MZI's top input arm; the internal one on the
  top arm between its two 50:50 couplers.
* Output phase shifter j (on mode j, after the last column) is heater
  m(m-1) + j.

An MZI with phases (theta, phi) has the transfer matrix, on its two modes,

    i e^{i theta/2} [[e^{i phi} sin(theta/2),  cos(theta/2)],
                     [e^{i phi} cos(theta/2), -sin(theta/2)]]

(couplers (1/sqrt 2)[[1, i], [i, 1]]): theta = 0 swaps the modes, theta = pi
passes them straight through.

`mesh_unitary` builds the m x m transfer matrix from the m**2 heater phases;
`clements` finds phases that give a requested unitary (Clements et al.,
Optica 3, 1460 (2016)): null the unitary's lower triangle by MZIs applied
alternately from the right and the left, then move the left ones through the
remaining diagonal. The simulator builds its chip with the first; the
scheduler compiles circuits with the second.
"""

from __future__ import annotations

import cmath
import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mzi:
    """One MZI: its index, column, top mode and heater numbers."""

    index: int
    column: int
    top: int
    theta_heater: int
    phi_heater: int

    @property
    def modes(self) -> tuple[int, int]:
        return (self.top, self.top + 1)


@dataclass(frozen=True)
class MeshLayout:
    """The rectangular (Clements) mesh of ``modes`` modes."""

    modes: int
    mzis: tuple[Mzi, ...]

    @property
    def heater_count(self) -> int:
        return self.modes * self.modes

    @property
    def mzi_count(self) -> int:
        return len(self.mzis)

    def output_heater(self, mode: int) -> int:
        return 2 * len(self.mzis) + mode

    def modes_of(self, heater: int) -> tuple[int, ...]:
        """The modes a heater acts on: its MZI's two, or an output phase shifter's one."""
        if not 0 <= heater < self.heater_count:
            raise ValueError(f"heater {heater} does not exist: a {self.modes}-mode mesh has {self.heater_count}")
        if heater >= 2 * len(self.mzis):
            return (heater - 2 * len(self.mzis),)
        return self.mzis[heater // 2].modes

    def at(self, column: int, top: int) -> Mzi:
        """The MZI in ``column`` whose top mode is ``top``."""
        return self._by_position[(column, top)]

    def describe_heater(self, heater: int) -> str:
        """A human name: ``'theta of MZI 4 (column 1, modes 1-2)'``."""
        if not 0 <= heater < self.heater_count:
            raise ValueError(f"heater {heater} does not exist: a {self.modes}-mode mesh has {self.heater_count}")
        if heater >= 2 * len(self.mzis):
            return f"output phase of mode {heater - 2 * len(self.mzis)}"
        mzi = self.mzis[heater // 2]
        kind = "theta" if heater % 2 == 0 else "phi"
        return f"{kind} of MZI {mzi.index} (column {mzi.column}, modes {mzi.top}-{mzi.top + 1})"

    def neighbours(self, heater: int) -> tuple[int, ...]:
        """Heaters close enough on the chip to share heat with ``heater``.

        The other heater of the same MZI, the same kind of heater on the MZIs
        directly above and below in the same column, and neighbouring output
        phase shifters.
        """
        n_mzi_heaters = 2 * len(self.mzis)
        if heater >= n_mzi_heaters:
            mode = heater - n_mzi_heaters
            return tuple(n_mzi_heaters + j for j in (mode - 1, mode + 1) if 0 <= j < self.modes)
        mzi = self.mzis[heater // 2]
        kind = heater % 2
        found = [2 * mzi.index + (1 - kind)]
        for top in (mzi.top - 2, mzi.top + 2):
            other = self._by_position.get((mzi.column, top))
            if other is not None:
                found.append(2 * other.index + kind)
        return tuple(sorted(found))

    @functools.cached_property
    def _by_position(self) -> dict[tuple[int, int], Mzi]:
        return {(mzi.column, mzi.top): mzi for mzi in self.mzis}


@functools.lru_cache(maxsize=64)
def clements_layout(modes: int) -> MeshLayout:
    """The layout of an m-mode rectangular mesh."""
    if modes < 1:
        raise ValueError(f"a mesh needs at least one mode, got {modes}")
    mzis: list[Mzi] = []
    for column in range(modes):
        for top in range(column % 2, modes - 1, 2):
            k = len(mzis)
            mzis.append(Mzi(index=k, column=column, top=top, theta_heater=2 * k, phi_heater=2 * k + 1))
    return MeshLayout(modes=modes, mzis=tuple(mzis))


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


def mzi_entries(theta: float, phi: float) -> tuple[complex, complex, complex, complex]:
    """The four entries of `mzi` as Python complex numbers (no array: this runs m**2 times per decomposition)."""
    s, c = math.sin(theta / 2), math.cos(theta / 2)
    e = cmath.exp(1j * phi)
    g = 1j * cmath.exp(0.5j * theta)
    return g * e * s, g * c, g * e * c, -g * s


def _entries(theta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`mzi_entries` for arrays of angles."""
    s, c = np.sin(theta / 2), np.cos(theta / 2)
    e = np.exp(1j * phi)
    g = 1j * np.exp(0.5j * theta)
    return g * e * s, g * c, g * e * c, -g * s


def _split(
    w00: np.ndarray, w01: np.ndarray, w10: np.ndarray, w11: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, theta, phi) with [[w00, w01], [w10, w11]] == diag(x, y) @ mzi(theta, phi), element-wise."""
    s, c = np.abs(w00), np.abs(w01)
    theta = 2 * np.arctan2(s, c)
    g = 1j * np.exp(0.5j * theta)
    norm_s, norm_c = np.sin(theta / 2), np.cos(theta / 2)
    both = (s > _EPS) & (c > _EPS)
    phi = np.where(both, np.angle(w00) - np.angle(w01), 0.0)
    e = np.exp(1j * phi)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # where() keeps the defined branch
        x = np.where(c > _EPS, w01 / (g * norm_c), w00 / (g * e * norm_s))
        y = np.where(s > _EPS, -w11 / (g * norm_s), w10 / (g * e * norm_c))
    return x, y, theta, np.mod(phi, TWO_PI)


def clements(unitary: np.ndarray) -> np.ndarray:
    """Mesh phases (m**2, numbered as in `protocol.mesh`) whose `mesh_unitary` is ``unitary``.

    Raises:
        ValueError: the matrix is not square and unitary (to 1e-8).
    """
    u = np.asarray(unitary, dtype=np.complex128)
    if u.ndim != 2 or u.shape[0] != u.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {u.shape}")
    result: np.ndarray = clements_many(u[None])[0]
    return result


def clements_many(unitaries: np.ndarray) -> np.ndarray:
    """`clements` of a stack of m x m unitaries (shape (n, m, m)) at once: phases of shape (n, m**2).

    The nulling sequence is the same for every matrix of a size, so each step
    runs on all of them together: a plan's phases are decomposed in a few
    numpy calls per MZI instead of a few per MZI per phase.
    """
    u = np.array(unitaries, dtype=np.complex128)
    if u.ndim != 3 or u.shape[1] != u.shape[2]:
        raise ValueError(f"expected a stack of square matrices, got shape {u.shape}")
    n, m = u.shape[0], u.shape[1]
    identity = np.eye(m)
    errors = np.abs(np.conj(np.transpose(u, (0, 2, 1))) @ u - identity).max(axis=(1, 2)) if n else np.zeros(0)
    if n and errors.max() > 1e-8:
        raise ValueError(f"the matrix is not unitary: |U^dagger U - 1| reaches {errors.max():.2e}")
    right: list[tuple[int, np.ndarray, np.ndarray]] = []  # applied first, in this order
    left: list[tuple[int, np.ndarray, np.ndarray]] = []
    columns = np.transpose(u, (0, 2, 1)).copy()  # the right steps mix columns: keep them as rows
    for i in range(m - 1):
        if i % 2 == 0:
            for j in range(i + 1):
                r, c = m - 1 - j, i - j
                a, b = columns[:, c, r], columns[:, c + 1, r]
                theta = 2 * np.arctan2(np.abs(b), np.abs(a))
                phi = np.mod(np.angle(a) - np.angle(-b), TWO_PI)
                m00, m01, m10, m11 = _entries(theta, phi)
                x, y = columns[:, c].copy(), columns[:, c + 1].copy()
                # columns @ M^dagger: new_c = x conj(m00) + y conj(m01); new_c1 = x conj(m10) + y conj(m11)
                columns[:, c] = x * np.conj(m00)[:, None] + y * np.conj(m01)[:, None]
                columns[:, c + 1] = x * np.conj(m10)[:, None] + y * np.conj(m11)[:, None]
                right.append((c, theta, phi))
        else:
            rows = np.transpose(columns, (0, 2, 1)).copy()
            for j in range(1, i + 2):
                r, c = m + j - i - 2, j - 1
                a, b = rows[:, r - 1, c], rows[:, r, c]
                theta = 2 * np.arctan2(np.abs(a), np.abs(b))
                phi = np.mod(np.angle(b) - np.angle(a), TWO_PI)
                m00, m01, m10, m11 = _entries(theta, phi)
                x, y = rows[:, r - 1].copy(), rows[:, r].copy()
                rows[:, r - 1] = m00[:, None] * x + m01[:, None] * y
                rows[:, r] = m10[:, None] * x + m11[:, None] * y
                left.append((r - 1, theta, phi))
            columns = np.transpose(rows, (0, 2, 1)).copy()
    diagonal = np.array([columns[:, k, k] for k in range(m)]).T.reshape(n, m)
    moved: list[tuple[int, np.ndarray, np.ndarray]] = []
    for top, theta, phi in reversed(left):
        m00, m01, m10, m11 = _entries(theta, phi)
        d0, d1 = diagonal[:, top], diagonal[:, top + 1]
        # mzi^dagger @ diag(d0, d1)
        x, y, theta2, phi2 = _split(np.conj(m00) * d0, np.conj(m10) * d1, np.conj(m01) * d0, np.conj(m11) * d1)
        diagonal[:, top], diagonal[:, top + 1] = x, y
        moved.append((top, theta2, phi2))
    # Application order: the right ones, then the moved left ones (the one
    # moved first acts first), then the output phases. Place each MZI in the earliest column
    # its modes allow; the Clements order fills the rectangle exactly.
    layout = clements_layout(m)
    phases = np.zeros((n, m * m))
    free = [0] * m
    for top, theta, phi in [*right, *moved]:
        column = max(free[top], free[top + 1])
        if column % 2 != top % 2:
            column += 1
        block = layout.at(column, top)
        phases[:, block.theta_heater], phases[:, block.phi_heater] = theta, phi
        free[top] = free[top + 1] = column + 1
    phases[:, 2 * layout.mzi_count :] = np.mod(np.angle(diagonal), TWO_PI)
    return phases


IDENTITY_MZI = (math.pi, math.pi)
"""(theta, phi) of an MZI that passes both modes straight through with no phase: mzi(pi, pi) is the identity."""


def embed_phases(block_phases: np.ndarray, modes: int) -> np.ndarray:
    """Phases of an ``modes``-mode mesh that acts as a smaller mesh's unitary on its top modes, identity below.

    The b-mode rectangular mesh is the top-left corner of the m-mode one (same
    columns, same tops); every other MZI is set to the identity and every
    other output phase to 0. Decomposing only the b x b block a job uses is
    what keeps compiling cheap: O(b**3), not O(m**3).
    """
    block_phases = np.asarray(block_phases, dtype=np.float64)
    b = math.isqrt(len(block_phases))
    if b * b != len(block_phases) or b > modes:
        raise ValueError(f"{len(block_phases)} phases are not a mesh of at most {modes} modes")
    small, big = clements_layout(b), clements_layout(modes)
    phases = np.empty(modes * modes)
    theta_heaters = np.arange(0, 2 * big.mzi_count, 2)
    phases[theta_heaters], phases[theta_heaters + 1] = IDENTITY_MZI
    for block in small.mzis:
        target = big.at(block.column, block.top)
        phases[target.theta_heater] = block_phases[block.theta_heater]
        phases[target.phi_heater] = block_phases[block.phi_heater]
    phases[2 * big.mzi_count :] = 0.0
    phases[2 * big.mzi_count : 2 * big.mzi_count + b] = block_phases[2 * small.mzi_count :]
    return phases
