"""A job's results as a scientist uses them: counts as numpy arrays, patterns, figures, files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from protocol.door import JobResult


class Result:
    """What a job measured and what it was measured under (a `protocol.door.JobResult`, read).

    ``counts(reg)[v]`` is how many shots register ``reg`` read value ``v``, its
    first mode the most significant bit; ``patterns(reg)`` is the same as
    ``{"01": n}``. ``calibration``, ``plan``, ``device`` and the times say what
    the counts were taken under; ``partial`` that the job did not complete.
    """

    def __init__(self, body: JobResult) -> None:
        self.body = body

    def __repr__(self) -> str:
        regs = ", ".join(self.registers)
        return f"<Result {self.job} {self.state}: {self.shots} shots, registers {regs}, calibration {self.calibration}>"

    job = property(lambda self: self.body.job)
    key = property(lambda self: self.body.key)
    tags = property(lambda self: list(self.body.tags))
    state = property(lambda self: self.body.state)
    reason = property(lambda self: self.body.reason)
    partial = property(lambda self: self.body.partial)
    shots = property(lambda self: self.body.shots)
    device = property(lambda self: self.body.device)
    calibration = property(lambda self: self.body.calibration)
    plan = property(lambda self: self.body.plan)
    submitted = property(lambda self: self.body.submitted)
    ended = property(lambda self: self.body.ended)
    figures = property(lambda self: self.body.figures)

    @property
    def registers(self) -> list[str]:
        """The registers read, in plan order (each once)."""
        return list(dict.fromkeys(r.name for r in self.body.registers))

    def counts(self, register: str, *, phase: int | None = None) -> np.ndarray:
        """The register's histogram (int64, ``2**bits`` long), summed over the phases that read it (or one)."""
        found = [r for r in self.body.registers if r.name == register and (phase is None or r.phase == phase)]
        if not found:
            raise KeyError(f"no register {register!r} in job {self.job}'s results (it has {', '.join(self.registers)})")
        total = np.zeros_like(np.asarray(found[0].counts), dtype=np.int64)
        for r in found:
            total = total + np.asarray(r.counts, dtype=np.int64)
        return total

    def modes(self, register: str) -> list[int]:
        """The circuit's modes the register reads, in bit order."""
        return next(list(r.modes) for r in self.body.registers if r.name == register)

    def patterns(self, register: str, *, phase: int | None = None) -> dict[str, int]:
        """Each output pattern read at least once (``"0110"``, first mode first) and its count, most frequent first."""
        counts = self.counts(register, phase=phase)
        bits = max(1, (len(counts) - 1).bit_length())
        order = np.argsort(-counts, kind="stable")
        return {format(int(v), f"0{bits}b"): int(counts[v]) for v in order if counts[v]}

    def joint(self, phase: int = 0) -> tuple[list[str], np.ndarray]:
        """A phase's registers read together: their names, and the histogram of their bits side by side."""
        for j in self.body.joint:
            if j.phase == phase:
                return list(j.registers), np.asarray(j.counts, dtype=np.int64)
        raise KeyError(f"job {self.job} has no joint counts for phase {phase}")

    # --- files ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: arrays as lists (what ``awen results --json`` prints)."""
        data: dict[str, Any] = msgspec.to_builtins(self.body, enc_hook=_array_to_list)
        return data

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_npz(self, path: str | os.PathLike[str]) -> None:
        """``counts.REG`` (and ``counts.pN.REG`` per phase), ``joint.pN`` and ``meta`` (JSON): no pickle."""
        arrays: dict[str, np.ndarray] = {}
        for name in self.registers:
            arrays[f"counts.{name}"] = self.counts(name)
        for r in self.body.registers:
            arrays[f"counts.p{r.phase}.{r.name}"] = np.asarray(r.counts, dtype=np.int64)
        for j in self.body.joint:
            arrays[f"joint.p{j.phase}"] = np.asarray(j.counts, dtype=np.int64)
        arrays["meta"] = np.array(json.dumps(self.to_dict()))
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Result:
        """A result saved with `to_npz` or `to_json`."""
        p = Path(path)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                text = str(data["meta"])
        else:
            text = p.read_text()
        return cls(msgspec.convert(json.loads(text), JobResult, dec_hook=_list_to_array))


def _array_to_list(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__}")


def _list_to_array(type_: type, value: Any) -> Any:
    if type_ is np.ndarray:
        return np.asarray(value)
    raise TypeError(f"cannot read {type_}")
