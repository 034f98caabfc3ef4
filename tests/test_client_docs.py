"""docs/client.md runs: every Python block, in order, in one namespace, against a real `awen up`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import awen_process, free_port

DOC = Path(__file__).resolve().parents[1] / "docs" / "client.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_tutorial_has_its_blocks():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 8
    assert any("savefig" in b for b in blocks)


@pytest.mark.system
def test_every_python_block_of_the_client_tutorial_runs(tmp_path, monkeypatch):
    data = tmp_path / "data"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("AWEN_DATA_DIR", str(data))
    monkeypatch.delenv("AWEN_CONNECT", raising=False)
    script = "\n\n".join(python_blocks(DOC.read_text()))
    (work / "tutorial.py").write_text(script)
    with awen_process("up", "--port", str(free_port()), "--modes", "4", "--no-http") as (_proc, out):
        out.until("awen: up", timeout=60)
        env = {**os.environ, "MPLBACKEND": "Agg", "AWEN_DATA_DIR": str(data)}
        ran = subprocess.run(
            [sys.executable, "tutorial.py"], cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
        )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-5000:]
    assert (work / "hom_sweep.png").stat().st_size > 1000
    assert (work / "hom.npz").exists()
    assert "refused: the circuit was refused: op analysis.0" in ran.stdout
    assert "cancelled" in ran.stdout
