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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


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
