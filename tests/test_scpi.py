"""The SCPI grammar, sans-IO: framing, parsing, blocks, header matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import scpi
from protocol.photonica import COMMANDS, find_command

texts = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="#\"'"), max_size=30)
messages = st.lists(
    st.one_of(texts.map(str.encode), st.binary(max_size=40).map(lambda b: b"HEAT:VOLT:ALL " + scpi.block(b))),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_framing_does_not_depend_on_how_the_bytes_arrive(sent, cuts):
    stream = b"".join(m + b"\n" for m in sent)
    framer = scpi.Framer()
    received: list[bytes | scpi.Overrun] = []
    position, index = 0, 0
    while position < len(stream):
        size = cuts[index % len(cuts)]
        received += framer.feed(stream[position : position + size])
        position += size
        index += 1
    assert received == sent
    assert framer.pending() == 0


def test_a_block_may_hold_newlines_and_semicolons():
    payload = b"a\nb;c\r\n#9\r"
    framer = scpi.Framer()
    line = b"HEAT:VOLT:ALL " + scpi.block(payload) + b";*IDN?"
    assert framer.feed(line + b"\n") == [line]
    first, second = scpi.parse_message(line)
    assert first == scpi.Parsed("HEAT:VOLT:ALL", False, (payload,))
    assert second == scpi.Parsed("*IDN", True, ())


def test_an_overrun_is_reported_once_and_the_next_message_is_intact():
    framer = scpi.Framer(limit=16)
    assert framer.feed(b"x" * 40) == [scpi.Overrun(40)]
    assert framer.feed(b"yyy\n*IDN?\n") == [b"*IDN?"]


@given(st.binary(max_size=2000))
def test_blocks_round_trip(data):
    assert scpi.unblock(scpi.block(data)) == data


@pytest.mark.parametrize(
    ("bad", "detail"),
    [(b"13abc", "expected a block"), (b"#3ab", "not 3 digits"), (b"#15ab", "holds 2"), (b"#0x", "expected a block")],
)
def test_malformed_blocks_are_named(bad, detail):
    with pytest.raises(scpi.ScpiError, match=detail) as caught:
        scpi.unblock(bad)
    assert caught.value.code == scpi.INVALID_BLOCK_DATA


@pytest.mark.parametrize(
    ("header", "query", "pattern"),
    [
        ("HEAT:VOLT", False, "HEATer:VOLTage"),
        ("heater:voltage", True, "HEATer:VOLTage"),
        ("Heat:Volt:All", False, "HEATer:VOLTage:ALL"),
        ("SYST:ERR", True, "SYSTem:ERRor"),
        ("*idn", True, "*IDN"),
        ("FETC:PATT", True, "FETCh:PATTerns"),
    ],
)
def test_headers_match_in_short_and_long_form_and_any_case(header, query, pattern):
    command = find_command(header, query)
    assert command is not None
    assert command.pattern == pattern


@pytest.mark.parametrize("header", ["HEATE:VOLT", "HEAT:VOLTA", "HEA:VOLT", "HEAT"])
def test_partial_forms_do_not_match(header):
    assert find_command(header, False) is None


def test_every_command_has_a_distinct_header():
    seen = {(c.pattern.upper(), c.query) for c in COMMANDS}
    assert len(seen) == len(COMMANDS)


def test_error_entries_round_trip():
    error = scpi.ScpiError(scpi.DATA_OUT_OF_RANGE, 'heater 3: "9 V"')
    assert scpi.parse_error_entry(error.entry()) == (-222, "Data out of range; heater 3: '9 V'")


@given(st.binary(min_size=1, max_size=40), st.sampled_from([b"", b" ", b"\t ", b" ;*OPC?"]))
def test_a_block_keeps_its_blank_last_bytes(data, after):
    # A heater setting whose last float64 byte is 0x20 or 0x09 lost it to the
    # parser's trimming ("block says 128 bytes, holds 127").
    for last in (0x20, 0x09):
        payload = data + bytes([last])
        parsed = scpi.parse_message(b"HEAT:VOLT:ALL " + scpi.block(payload) + after)
        assert isinstance(parsed[0], scpi.Parsed)
        assert parsed[0].params == (payload,)


@pytest.mark.parametrize("piece", [1, 7, 16, 1000])
def test_a_block_s_bytes_are_never_read_as_messages_after_an_overrun(piece):
    # Found by stress/fuzz_scpi.py: once a message outgrew the limit, the framer
    # dropped bytes up to the next newline, even one inside a block, and read the
    # rest of the block as commands.
    payload = b"0123456789\nRUN:SHOT 1\n0123456"
    stream = b"HEAT:VOLT:ALL #2" + str(len(payload)).encode() + payload + b";*IDN?\n*CLS\n"
    framer = scpi.Framer(limit=16)
    received: list[bytes | scpi.Overrun] = []
    for start in range(0, len(stream), piece):
        received += framer.feed(stream[start : start + piece])
    assert [type(item) for item in received] == [scpi.Overrun, bytes]
    assert received[1] == b"*CLS"
    assert framer.pending() == 0


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_short_message_is_not_an_overrun_while_a_block_s_length_is_awaited(piece):
    # Found by stress/fuzz_scpi.py: '#9' waits for nine length digits; the bytes
    # after the message's newline piled up meanwhile and counted against it.
    stream = b"SYST:ECHO? #9x\n*IDN?\n"
    framer = scpi.Framer(limit=16)
    received: list[bytes | scpi.Overrun] = []
    for start in range(0, len(stream), piece):
        received += framer.feed(stream[start : start + piece])
    assert received == [b"SYST:ECHO? #9x", b"*IDN?"]
