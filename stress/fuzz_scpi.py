"""Coverage-guided fuzzing of the SCPI framer and parser and of the simulated device's command handling.

Properties, checked on every input:

* the framer (`protocol.scpi.Framer`) never raises and frames a byte stream
  the same however it arrives (one feed or many pieces), overruns included;
* the parser (`protocol.scpi.parse_message`) never raises: every command is a
  `Parsed` or an `ScpiError` with a known SCPI number;
* the device (`sim.Device.handle`) never raises on any bytes, only queues
  errors; each reply is exactly one frame (a client's framer reads it back
  whole, so no reply can desynchronise a client); the error queue stays
  bounded and every entry reads back; and no state over a limit ever reaches
  the chip (the audit record shows none).

Run it (atheris is not one of awen's dependencies; install it for the run)::

    .venv/bin/python -m pip install atheris
    .venv/bin/python stress/fuzz_scpi.py -max_total_time=600 stress/corpus-scpi

Any libFuzzer option works (``-runs=``, ``-jobs=``, ``-max_len=``); a crash
is written to ``crash-<hash>`` and replayed with ``stress/fuzz_scpi.py
crash-<hash>``. tests/test_sim_fuzz.py checks the same properties with
hypothesis on every ``make test``.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # fuzzing: what is fuzzed is instrumented for coverage as it is imported
    import atheris

    with atheris.instrument_imports(include=["protocol", "sim"]):
        import protocol.scpi  # noqa: F401
        import sim  # noqa: F401

from protocol import scpi  # noqa: E402
from protocol.photonica import COMMANDS, DEVICE_ERRORS, Param  # noqa: E402
from sim import Device, FaultConfig, RecordEntry, SimConfig, parse_config, record_violations  # noqa: E402
from stress._fuzzing import fuzz  # noqa: E402

CONFIGS: tuple[SimConfig, ...] = (
    parse_config({"modes": 2, "max_shots": 200, "delay_lines": {"count": 1}}),
    parse_config(
        {
            "modes": 3,
            "max_shots": 200,
            "clock": "commands",
            "detectors": {"kind": "pnr"},
            "heaters": {"v_max": {"default": 6.0, "2": 3.0}, "power_max_w": {"5": 0.01}, "power_limit_w": 0.1},
            "power_on": {"sources": True, "volts": {"1": 1.0}},
        }
    ),
)
"""Small chips with few shots: the fuzzer's time goes into the command handling, not the physics."""

WORDS = (
    "0", "1", "-1", "2.5", "1e-3", "7", "6.9", "1e9", "nan", "inf", "-0", "+3", "3.0", "0x10",
    "ON", "OFF", "PHOT", "COH", "VAC", "PHOTON", "coherent", "MAYBE", "01", "10", "101",
    '"quoted"', "'single'", '"', "#0", "#15abcde", "#3", "#210" + "x" * 10, "",
)  # fmt: skip
"""Parameter words the structured messages draw from, besides the fuzzer's own bytes."""

TOKENS = sorted(
    {c.short for c in COMMANDS} | {c.long for c in COMMANDS} | {w for w in WORDS if w} | {";", ",", ":", "?", "\r"}
)
"""libFuzzer's dictionary: the pieces a valid message is made of."""


# --- the properties ------------------------------------------------------------------------------


def _marked(items: Sequence[bytes | scpi.Overrun]) -> list[bytes | None]:
    """Frames with overruns as None: how many bytes an overrun counted depends on when it was noticed."""
    return [None if isinstance(item, scpi.Overrun) else item for item in items]


def check_framer(data: bytes, cuts: Sequence[int], limit: int = scpi.MAX_MESSAGE) -> list[bytes | None]:
    """Frame ``data`` whole and in pieces of the sizes ``cuts`` (repeated); both must agree."""
    whole = scpi.Framer(limit=limit)
    at_once = _marked(whole.feed(data))
    pieces = scpi.Framer(limit=limit)
    piecewise: list[bytes | None] = []
    position, index = 0, 0
    while position < len(data):
        size = max(1, cuts[index % len(cuts)]) if cuts else len(data)
        piecewise += _marked(pieces.feed(data[position : position + size]))
        position += size
        index += 1
    assert piecewise == at_once, (piecewise, at_once)
    for item in at_once:
        assert item is None or len(item) <= limit
    return at_once


def check_parser(message: bytes) -> None:
    """``parse_message`` answers a command or an error with a known number for every unit."""
    for item in scpi.parse_message(message):
        if isinstance(item, scpi.ScpiError):
            assert item.code in scpi.ERROR_TEXT, item
            scpi.parse_error_entry(item.entry())
        else:
            assert isinstance(item, scpi.Parsed)
            assert item.header
            assert all(isinstance(p, str | bytes) for p in item.params)


def check_reply(reply: bytes | None) -> None:
    """A reply is one frame: the client's framer reads exactly it back."""
    if reply is None:
        return
    assert isinstance(reply, bytes)
    assert scpi.Framer().feed(reply + b"\n") == [reply], reply[:200]


class DeviceCheck:
    """A fresh device, its audit record and a host clock the input moves; checks after each message."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.now = 0.0
        self.entries: list[RecordEntry] = []
        self.device = Device(config, seed=0, host_clock=lambda: self.now, record=self.entries.append)
        self.stuck = set(self.device.chip.stuck)

    def send(self, message: bytes, faults: list[FaultConfig] | None = None, *, wait: float = 0.0) -> bytes | None:
        self.now += wait
        self.device.check_watchdog()
        reply = self.device.handle(message, faults)
        check_reply(reply)
        self.check_state()
        return reply

    def check_state(self) -> None:
        device = self.device
        assert len(device.errors) <= 32
        volts = device.chip.applied_voltages()
        free = [h for h in range(len(volts)) if h not in self.stuck]
        assert np.isfinite(volts).all()
        assert (volts[free] >= 0).all()
        assert (volts[free] <= np.array(self.config.heater_v_max)[free]).all()
        if not device.interlock:
            assert device.chip.power() <= self.config.power_limit_w
        else:
            assert not volts[free].any()

    def finish(self) -> None:
        """Drain the error queue (every entry reads back) and audit the record."""
        for _ in range(40):
            reply = self.device.handle(b"SYST:ERR?")
            assert reply is not None
            code, _text = scpi.parse_error_entry(reply.decode("ascii"))
            assert code in scpi.ERROR_TEXT or code in DEVICE_ERRORS or code == -240, reply
            if code == 0:
                break
        else:
            raise AssertionError("the error queue never empties")
        if not self.stuck:
            assert record_violations(self.entries) == [], record_violations(self.entries)[:3]
        assert [e.seq for e in self.entries] == list(range(1, len(self.entries) + 1))


# --- from the fuzzer's bytes to inputs -------------------------------------------------------------


NUMBERS = ("0", "1", "2", "3", "-1", "0.5", "2.5", "1e-3", "4.5", "6.9", "7", "7.0000001", "1e9", "nan", "-inf")


def _param(param: Param, pick: Callable[[int], int], text: Callable[[], bytes], heaters: int) -> bytes:
    """A parameter of the kind the command takes, mostly plausible, sometimes not."""
    if pick(6) == 0:  # anything at all
        return (text(), scpi.block(text()), WORDS[pick(len(WORDS))].encode())[pick(3)]
    if param.kind == "int":
        return str(pick(heaters + 2) - 1).encode()
    if param.kind == "float":
        return NUMBERS[pick(len(NUMBERS))].encode()
    if param.kind == "bool":
        return (b"ON", b"OFF", b"1", b"0", b"on")[pick(5)]
    if param.kind == "choice":
        choice = param.choices[pick(len(param.choices))]
        return (choice, "".join(ch for ch in choice if ch.isupper()), choice.lower())[pick(3)].encode()
    if param.kind == "bits":
        return "".join("01"[pick(2)] for _ in range(1 + pick(3))).encode()
    if param.kind == "int_list":
        return b",".join(str(pick(5)).encode() for _ in range(1 + pick(3)))
    if param.kind == "block":
        return scpi.block(text())
    # rest: heater voltages (as a block of float64 or as numbers), or phase pairs
    count = heaters + pick(3) - 1
    volts = [float(NUMBERS[pick(10)]) for _ in range(count)]  # up to 6.9 V: enough to trip the interlock
    if pick(2):
        return scpi.block(b"".join(struct.pack("<d", v) for v in volts))
    return b",".join(repr(v).encode() for v in volts)


def _command(pick: Callable[[int], int], text: Callable[[], bytes], heaters: int) -> bytes:
    """One command from the command set, in a random form, with parameters of its kinds or the input's bytes."""
    command = COMMANDS[pick(len(COMMANDS))]
    form = (command.short, command.long, command.long.lower(), ":" + command.short)[pick(4)]
    if command.query and pick(8) == 0:
        form = form.rstrip("?")
    elif not command.query and pick(8) == 0:
        form += "?"
    params = [_param(param, pick, text, heaters) for param in command.params]
    if params and pick(6) == 0:
        params = params[: pick(len(params) + 1)]  # too few
    elif pick(8) == 0:
        params.append(WORDS[pick(len(WORDS))].encode())  # too many
    return form.encode() + (b" " + b",".join(params) if params else b"")


def device_input(data: bytes) -> tuple[int, list[tuple[bytes, list[FaultConfig], float]]]:
    """A configuration and a list of (message, faults, seconds waited before it) from fuzzer bytes."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)

    def pick(n: int) -> int:
        return fdp.ConsumeIntInRange(0, n - 1) if n > 1 else 0

    def text() -> bytes:
        return fdp.ConsumeBytes(pick(24))

    config = pick(len(CONFIGS))
    messages = []
    for _ in range(1 + pick(12)):
        if fdp.remaining_bytes() == 0:
            break
        if pick(4) == 0:
            message = fdp.ConsumeBytes(pick(200))
        else:
            heaters = CONFIGS[config].heater_count
            message = b";".join(_command(pick, text, heaters) for _ in range(1 + pick(3)))
        faults = []
        if pick(16) == 0:
            faults.append(FaultConfig(kind="error", code=-240, message="injected"))
        if pick(32) == 0:
            faults.append(FaultConfig(kind="interlock", message="injected"))
        messages.append((message, faults, float(pick(4))))
    return config, messages


def run_device(config: int, messages: list[tuple[bytes, list[FaultConfig], float]]) -> None:
    check = DeviceCheck(CONFIGS[config])
    for message, faults, wait in messages:
        check.send(message, faults, wait=wait)
    check.finish()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, rest = data[0] % 4, data[1:]
    if target == 0:
        cuts = list(rest[:4]) or [1]
        check_framer(rest[4:], cuts, limit=(64, 200, scpi.MAX_MESSAGE)[rest[0] % 3] if rest else scpi.MAX_MESSAGE)
    elif target == 1:
        check_parser(rest)
    else:
        run_device(*device_input(rest))


# --- the command line -------------------------------------------------------------------------------


def _seed_corpus(directory: Path) -> None:
    """A few valid inputs to start from, when the corpus directory is empty."""
    if any(directory.iterdir()):
        return
    seeds = [
        b"\x00" + b"\x01\x07\x03\x02" + b"HEAT:VOLT:ALL #216abcdefghijklmnop;*IDN?\nSYST:ERR?\n",
        b"\x01" + b"HEAT:VOLT 3,2.5;HEAT:VOLT? 3;SYST:ERR?",
        b"\x01" + b'SYST:NAME "a;b",#15ab\ncd,x',
    ]
    for line in (
        b"*RST;INP:STAT 0,PHOT;SOUR:ENAB ON;RUN:SHOT 50;FETC:HIST?",
        b"HEAT:VOLT:ALL 1,1,1,1,1,1,1,1,1;SYST:WATC 1;DLIN:ROUT 0,0,1,3;FFOR:MEAS 1;FFOR:RULE 1,0,1.5",
    ):
        seeds.append(b"\x02" + bytes([1, 3]) + line)
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i}").write_bytes(seed)


def main(argv: list[str]) -> None:
    fuzz(argv, test_one_input, _seed_corpus, [token.encode() for token in TOKENS])


if __name__ == "__main__":
    main(sys.argv)
