"""The SCPI grammar, sans-IO: framing, parsing, blocks, header matching; commands composed and read back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import photonica as px
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


def _read_back(message: bytes) -> list[tuple[px.Command, list[object]]]:
    """What a device makes of a message: each command and its arguments."""
    out: list[tuple[px.Command, list[object]]] = []
    for parsed in scpi.parse_message(message):
        assert isinstance(parsed, scpi.Parsed), parsed
        command = find_command(parsed.header, parsed.query)
        assert command is not None, parsed
        out.append((command, command.parse_arguments(parsed.params)))
    return out


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just(px.SET_HEATER), st.tuples(st.integers(0, 10**6), finite)),
        st.tuples(st.just(px.ARM_WATCHDOG), st.tuples(finite)),
        st.tuples(st.just(px.ENABLE_SOURCES), st.tuples(st.booleans())),
        st.tuples(st.just(px.ROUTE_DELAY_LINE), st.tuples(*[st.integers(-(10**9), 10**9)] * 4)),
        st.tuples(st.just(px.SET_INPUT), st.tuples(st.integers(0, 63), st.just("PHOTon"))),
        st.tuples(st.just(px.SET_INPUT), st.tuples(st.integers(0, 63), st.just("COHerent"), finite, finite)),
        st.tuples(st.just(px.SET_FEEDFORWARD_MODES), st.tuples(st.lists(st.integers(0, 63), min_size=1))),
        st.tuples(st.just(px.ECHO), st.tuples(st.integers(0, 10**12))),
        st.tuples(st.just(px.POWERS), st.tuples()),
    )
)
def test_a_composed_command_reads_back_as_its_arguments(command_and_args):
    command, args = command_and_args
    ((read_command, read_args),) = _read_back(command.compose(*args))
    assert read_command is command
    left_off = [None] * (len(command.params) - len(args))  # optional parameters not given
    assert read_args == [*args, *left_off]


@given(st.binary(max_size=200), st.lists(finite, max_size=8))
def test_the_rest_of_a_command_may_be_blocks_or_numbers(data, numbers):
    ((_, (as_block,)),) = _read_back(px.SET_HEATERS.compose(data))
    assert as_block == [data]
    if numbers:
        ((_, (as_numbers,)),) = _read_back(px.SET_HEATERS.compose(*numbers))
        assert [px.parse_float(n) for n in as_numbers] == numbers


@pytest.mark.parametrize(
    ("command", "args", "sent"),
    [
        (px.HEATER, (0,), b"HEAT:VOLT? 0"),
        (px.SET_HEATER, (3, 2.5), b"HEAT:VOLT 3,2.5"),
        (px.SET_INPUT, (0, "photon"), b"INP:STAT 0,PHOT"),
        (px.SET_INPUT, (2, "coherent", 1e-3, None), b"INP:STAT 2,COH,0.001"),
        (px.SET_HEATERS, (0, 0, 0), b"HEAT:VOLT:ALL 0,0,0"),
        (px.SET_HEATERS, (b"ab",), b"HEAT:VOLT:ALL #12ab"),
        (px.ADD_FEEDFORWARD_RULE, ("10", 3, 1.5), b"FFOR:RULE 10,3,1.5"),
        (px.ENABLE_SOURCES, (False,), b"SOUR:ENAB OFF"),
        (px.RUN_SHOTS, (10,), b"RUN:SHOT 10"),
        (px.NEXT_ERROR, (), b"SYST:ERR?"),
        (px.IDENTITY, (), b"*IDN?"),
    ],
)
def test_commands_go_out_in_their_short_form(command, args, sent):
    assert command.compose(*args) == sent


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (px.SET_HEATER, (3,), "needs <volts>"),
        (px.SET_HEATER, (3, 1.0, 2.0), "takes 2 argument"),
        (px.SET_HEATER, (3.5, 1.0), r"<heater> \(int\) cannot be 3.5"),
        (px.RUN_SHOTS, (True,), "ON or OFF"),
        (px.SET_INPUT, (0, "laser"), "is one of"),
        (px.SET_INPUT, (0, "coherent", None, 1.0), "left off only"),
        (px.ADD_FEEDFORWARD_RULE, ("12",), "bits"),
        (px.ENABLE_SOURCES, ("ON",), "cannot be"),
    ],
)
def test_a_command_composed_with_the_wrong_arguments_is_a_type_error(command, args, message):
    with pytest.raises(TypeError, match=message):
        command.compose(*args)


def test_every_command_is_a_named_constant_of_the_command_set():
    named = {value for name, value in vars(px).items() if isinstance(value, px.Command) and name.isupper()}
    assert named == set(COMMANDS)
    assert len(COMMANDS) == len(set(COMMANDS))
