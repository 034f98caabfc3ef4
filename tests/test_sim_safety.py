"""The simulated device's safety: its power-on state, *RST, and its limits per heater."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import scpi
from protocol.photonica import decode_description
from sim import Device, SimConfig, SimConfigError, parse_config


def ask(device: Device, line: bytes) -> bytes:
    reply = device.handle(line)
    assert reply is not None, line
    return reply


def error(device: Device) -> tuple[int, str]:
    return scpi.parse_error_entry(ask(device, b"SYST:ERR?").decode())


def description(device: Device):  # type: ignore[no-untyped-def]
    return decode_description(scpi.unblock(ask(device, b"SYST:CAP?")))


# --- power-on and *RST ----------------------------------------------------------------------


def test_the_device_powers_up_safe():
    device = Device(SimConfig(modes=4), seed=1)
    assert ask(device, b"SOUR:ENAB?") == b"0"
    assert not np.frombuffer(scpi.unblock(ask(device, b"HEAT:VOLT:ALL?")), "<f8").any()
    assert float(ask(device, b"HEAT:POW?")) == 0


def test_a_device_file_may_say_it_powers_up_with_sources_on_and_heaters_set():
    config = parse_config({"modes": 4, "power_on": {"sources": True, "volts": {"3": 2.5, "5": 1.0}}})
    device = Device(config, seed=1)
    assert ask(device, b"SOUR:ENAB?") == b"1"
    volts = np.frombuffer(scpi.unblock(ask(device, b"HEAT:VOLT:ALL?")), "<f8")
    assert volts[3] == 2.5
    assert volts[5] == 1.0
    assert np.count_nonzero(volts) == 2


@pytest.mark.parametrize(
    ("power_on", "detail"),
    [
        ({"volts": 8.0}, "power_on.volts: heater 0: 8 V is outside 0-7 V"),
        ({"volts": [1.0, 2.0]}, "power_on.volts: 2 values for 16 heaters"),
        ({"volts": {"16": 1.0}}, "power_on.volts: '16' is not a heater (0-15) or 'default'"),
        ({"volts": 6.0}, "power_on.volts: 0.576 W (nominal) exceeds heaters.power_limit_w 0.56 W"),
    ],
)
def test_a_power_on_state_over_the_limits_is_refused(power_on, detail):
    with pytest.raises(SimConfigError) as caught:
        parse_config({"modes": 4, "power_on": power_on})
    assert detail in str(caught.value)


def test_rst_puts_the_device_in_its_safe_state_with_the_sources_off():
    # SCPI's *RST state has outputs off; a reset device must not emit light.
    config = parse_config({"modes": 4, "power_on": {"sources": True}})
    device = Device(config, seed=1)
    device.handle(b"HEAT:VOLT 2,3;SOUR:ENAB ON;INP:STAT 0,PHOT;SYST:WATC 10")
    device.handle(b"*RST")
    assert ask(device, b"SOUR:ENAB?") == b"0"
    assert float(ask(device, b"HEAT:VOLT? 2")) == 0
    assert ask(device, b"INP:STAT? 0") == b"VAC"
    assert float(ask(device, b"SYST:WATC?")) == 0
    assert ask(device, b"SYST:ERR?") == b'0,"No error"'


def test_shots_need_the_sources_switched_on_after_power_up():
    device = Device(SimConfig(modes=4), seed=1)
    device.handle(b"INP:STAT 0,PHOT;RUN:SHOT 10")
    assert error(device)[0] == 103
    device.handle(b"SOUR:ENAB ON;RUN:SHOT 10")
    assert ask(device, b"SYST:ERR?") == b'0,"No error"'
    assert ask(device, b"FETC:SHOT?") == b"10"
