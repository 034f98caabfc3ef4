"""The simulated device's safety: its power-on state, *RST, and its limits per heater."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocol import scpi
from protocol.photonica import decode_description
from sim import Device, SimConfig, SimConfigError, load_config, parse_config


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


# --- limits per heater ----------------------------------------------------------------------

EXACT = {"resistance_spread": 0.0}  # true resistances are the nominal 1 kOhm


def limited(**heaters: object) -> Device:
    return Device(parse_config({"modes": 4, "heaters": {**EXACT, **heaters}}), seed=1)


def test_v_max_per_heater_from_a_list():
    v_max = [7.0] * 16
    v_max[3] = 4.0
    device = limited(v_max=v_max)
    assert description(device).heaters.v_max == v_max
    device.handle(b"HEAT:VOLT 3,4.5")
    code, text = error(device)
    assert code == scpi.DATA_OUT_OF_RANGE
    assert "heater 3: 4.5 V is outside 0-4 V" in text
    device.handle(b"HEAT:VOLT 3,4;HEAT:VOLT 4,6.5")
    assert ask(device, b"SYST:ERR?") == b'0,"No error"'


def test_v_max_per_heater_from_a_map_over_a_default():
    device = limited(v_max={"default": 6.0, "3": 4.0, "15": 5.0})
    expected = [6.0] * 16
    expected[3], expected[15] = 4.0, 5.0
    assert description(device).heaters.v_max == expected
    device.handle(b"HEAT:VOLT 0,6.5")
    assert "heater 0: 6.5 V is outside 0-6 V" in error(device)[1]


def test_a_map_without_a_default_overrides_the_usual_limit():
    device = limited(v_max={"3": 4.0})
    assert description(device).heaters.v_max[:4] == [7.0, 7.0, 7.0, 4.0]


def test_power_per_heater_is_refused_over_its_limit():
    device = limited(power_max_w=0.02)  # 20 mW: 4.47 V at 1 kOhm
    assert description(device).heaters.power_max_w == [0.02] * 16
    device.handle(b"HEAT:VOLT 2,4.4;HEAT:VOLT 2,4.5")
    code, text = error(device)
    assert code == scpi.DATA_OUT_OF_RANGE
    assert "heater 2: 4.5 V draws 0.02025 W, over its limit 0.02 W" in text
    assert float(ask(device, b"HEAT:VOLT? 2")) == 4.4  # the refused setting changed nothing
    assert ask(device, b"SYST:INT?") == b"0"  # refused, not tripped


def test_a_whole_setting_with_one_heater_over_its_power_is_refused_and_changes_nothing():
    device = limited(power_max_w={"5": 0.01})
    volts = np.full(16, 1.0)
    volts[5] = 3.5  # 12.25 mW
    device.handle(b"HEAT:VOLT:ALL " + scpi.block(volts.tobytes()))
    code, text = error(device)
    assert (code, "heater 5" in text) == (scpi.DATA_OUT_OF_RANGE, True)
    assert not np.frombuffer(scpi.unblock(ask(device, b"HEAT:VOLT:ALL?")), "<f8").any()


def test_heaters_without_a_power_limit_of_their_own_describe_what_v_max_allows():
    device = limited(power_max_w={"5": 0.01}, v_max={"default": 7.0, "6": 5.0})
    power_max = description(device).heaters.power_max_w
    assert power_max is not None
    assert power_max[5] == 0.01
    assert power_max[4] == pytest.approx(49 / 1000)
    assert power_max[6] == pytest.approx(25 / 1000)
    device.handle(b"HEAT:VOLT 4,7")
    assert ask(device, b"SYST:ERR?") == b'0,"No error"'


def test_no_power_limit_per_heater_is_described_as_none():
    assert description(limited()).heaters.power_max_w is None


def test_the_total_still_trips_the_interlock():
    device = limited(power_max_w=0.04, power_limit_w=0.1)
    device.handle(b"HEAT:VOLT:ALL " + b",".join([b"3"] * 16))  # 9 mW each, 144 mW in all
    assert ask(device, b"SYST:INT?") == b"1"
    assert error(device)[0] == 101


@pytest.mark.parametrize(
    ("heaters", "detail"),
    [
        ({"v_max": [7.0] * 15}, "heaters.v_max: 15 values for 16 heaters"),
        ({"v_max": {"x": 1.0}}, "heaters.v_max: 'x' is not a heater (0-15) or 'default'"),
        ({"power_max_w": {"-1": 1.0}}, "heaters.power_max_w: '-1' is not a heater"),
        ({"v_max": [7.0] * 15 + [-1.0]}, "Expected `float` > 0.0"),
    ],
)
def test_per_heater_limits_that_do_not_fit_the_chip_are_refused(heaters, detail):
    with pytest.raises(SimConfigError) as caught:
        parse_config({"modes": 4, "heaters": heaters})
    assert detail in str(caught.value)


def test_a_description_without_power_limits_per_heater_still_decodes():
    described = SimConfig(modes=2).description()
    from protocol.photonica import encode_description

    data = encode_description(described).replace(b',"power_max_w":null', b"")
    assert b"power_max_w" not in data
    assert decode_description(data).heaters.power_max_w is None


def test_the_per_heater_limits_of_the_simulator_doc_load(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "simulator.md").read_text()
    example = next(block for block in doc.split("```toml")[1:] if "power_max_w" in block).split("```")[0]
    path = tmp_path / "chip.toml"
    path.write_text(example)
    config = load_config(path)
    assert config.heater_v_max[12] == 4.0
    assert config.heater_v_max[0] == 6.5
    assert config.heater_power_max_w == [0.04] * 64


def test_the_device_holds_a_heater_to_the_power_it_describes_even_without_a_limit_of_its_own():
    device = Device(parse_config({"modes": 4, "heaters": {"power_max_w": {"0": 1.0}}}), seed=1)
    low = int(np.argmin(device.chip.resistance[1:])) + 1  # its true resistance is under the nominal
    assert device.chip.resistance[low] < 1000
    described = description(device).heaters.power_max_w
    assert described is not None
    assert described[low] == pytest.approx(0.049)
    device.handle(f"HEAT:VOLT {low},7".encode())  # within v_max, over the power it describes
    code, text = error(device)
    assert code == scpi.DATA_OUT_OF_RANGE
    assert f"heater {low}: 7 V draws" in text
