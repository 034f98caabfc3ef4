"""The wire protocol: envelope codec, validation errors, numpy ext type, schema."""

from __future__ import annotations

import contextlib
import json

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from awen.cli import main as awen_main
from protocol import (
    NDARRAY_EXT,
    PROTOCOL_VERSION,
    Catalog,
    Codec,
    ErrorCode,
    FrameTooLarge,
    InvalidMessage,
    MalformedFrame,
    ProtocolError,
    UnknownMessageType,
    UnsupportedVersion,
    make_envelope,
    protocol_schema,
)
from protocol.catalog import CATALOG
from protocol.system import Error, GetStatus, Heartbeat, Ping, Status

from .strategies import arrays, message_of, messages, same

codec = Codec(CATALOG)


def frame_of(message: msgspec.Struct, **header: object) -> bytes:
    """A frame written field by field with the msgpack package, as a foreign client would."""
    envelope = {
        "v": PROTOCOL_VERSION,
        "id": 7,
        "type": message.TYPE,  # type: ignore[attr-defined]
        "from": "client",
        "to": "alpha",
        "re": None,
        "ts": 1700000000.5,
        "body": msgspec.to_builtins(message, builtin_types=(bytes,)),
    }
    envelope.update(header)
    return msgpack.packb(envelope)


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(CATALOG), ids=lambda cls: cls.TYPE)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips(cls, data):
    body = data.draw(message_of(cls))
    msg_id = data.draw(st.integers(0, 2**63 - 1))
    re = data.draw(st.one_of(st.none(), st.integers(0, 2**63 - 1)))
    env = make_envelope(body, sender="a", to="b", id=msg_id, re=re)
    back = codec.decode(codec.encode(env))
    assert type(back.body) is cls
    assert same(back, env)


@settings(max_examples=200, deadline=None)
@given(arrays())
def test_numpy_arrays_round_trip_bit_for_bit(array):
    env = make_envelope(Ping(data=array), sender="a", to="b", id=1)
    back = codec.decode(codec.encode(env)).body.data
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_numpy_array_travels_as_ext_type_not_as_a_list():
    array = np.arange(6, dtype="<f8").reshape(2, 3)
    frame = codec.encode(make_envelope(Ping(data=array), sender="a", to="b", id=1))
    raw = msgpack.unpackb(frame)
    ext = raw["body"]["data"]
    assert isinstance(ext, msgpack.ExtType)
    assert ext.code == NDARRAY_EXT
    assert msgpack.unpackb(ext.data) == ["<f8", [2, 3], array.tobytes()]


def test_non_contiguous_and_zero_dim_arrays_survive():
    cases = [np.arange(12.0).reshape(3, 4)[:, ::2], np.array(3.5), np.zeros((0, 4), dtype="<i4")]
    for array in cases:
        back = codec.decode(codec.encode(make_envelope(Ping(data=array), sender="a", to="b", id=1))).body.data
        assert np.array_equal(back, array)
        assert back.shape == array.shape


def test_object_arrays_are_refused_when_sending():
    env = make_envelope(Ping(data=np.array([object()])), sender="a", to="b", id=1)
    with pytest.raises(TypeError, match="dtype object"):
        codec.encode(env)


# --- interoperability with the msgpack package -------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(messages())
def test_frames_from_msgpack_package_decode_like_our_own(body):
    ours = codec.encode(make_envelope(body, sender="a", to="b", id=3, ts=12.5))

    def ext_to_msgpack(obj):
        if isinstance(obj, np.ndarray):
            array = obj.copy(order="C")
            payload = msgpack.packb([array.dtype.str, list(array.shape), array.tobytes()])
            return msgpack.ExtType(NDARRAY_EXT, payload)
        raise TypeError(type(obj))

    plain = msgspec.to_builtins(body, builtin_types=(bytes, np.ndarray))
    theirs = msgpack.packb(
        {"v": 1, "id": 3, "type": body.TYPE, "from": "a", "to": "b", "re": None, "ts": 12.5, "body": plain},
        default=ext_to_msgpack,
    )
    assert same(codec.decode(theirs), codec.decode(ours))
    # ...and the msgpack package reads our frames as the same structure.
    assert same(msgpack.unpackb(ours, strict_map_key=False), msgpack.unpackb(theirs, strict_map_key=False))


# --- errors name the problem -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error", "field", "text"),
    [
        (b"", MalformedFrame, None, "not valid MessagePack"),
        (b"\xc1", MalformedFrame, None, "not valid MessagePack"),
        (msgpack.packb([1, 2, 3]), MalformedFrame, None, "not an envelope"),
        (msgpack.packb(42), MalformedFrame, None, "not an envelope"),
        (frame_of(Ping(), v=2), UnsupportedVersion, "v", "version 2 is not supported"),
        (frame_of(Ping(), v=9, extra=1), UnsupportedVersion, "v", "version 9"),
        (frame_of(Ping(), type="job.sumbit"), UnknownMessageType, "type", "'job.sumbit'"),
        (frame_of(Ping(), id="seven"), InvalidMessage, "id", "Expected `int`"),
        (frame_of(Ping(), id=-1), InvalidMessage, "id", ">= 0"),
        (frame_of(Ping(), surprise=1), InvalidMessage, "surprise", "unknown field"),
        (
            msgpack.packb({"v": 1, "id": 1, "type": "sys.ping", "from": "c", "ts": 0.0, "body": {}}),
            InvalidMessage,
            "to",
            "missing required field",
        ),
        (frame_of(Ping(), body={"datta": 1}), InvalidMessage, "body.datta", "unknown field `datta`"),
        (
            frame_of(Heartbeat(name="a", pid=1, incarnation=1, seq=1, interval=1.0, uptime=0.0), body={"name": "a"}),
            InvalidMessage,
            "body.pid",
            "missing required field",
        ),
        (
            frame_of(Heartbeat(name="a", pid=1, incarnation=1, seq=1, interval=1.0, uptime=0.0)).replace(
                b"\xa3pid\x01", b"\xa3pid\xa3one"
            ),
            InvalidMessage,
            "body.pid",
            "Expected `int`, got `str`",
        ),
        (
            frame_of(Heartbeat(name="a", pid=1, incarnation=1, seq=1, interval=-1.0, uptime=0.0)),
            InvalidMessage,
            "body.interval",
            ">= 0",
        ),
        (
            frame_of(Ping(), body={"data": msgpack.ExtType(NDARRAY_EXT, msgpack.packb(["<f8", [2], b"abc"]))}),
            InvalidMessage,
            "body",
            "needs 16 bytes, the frame has 3",
        ),
        (
            frame_of(Ping(), body={"data": msgpack.ExtType(NDARRAY_EXT, msgpack.packb(["|O", [1], b"x" * 8]))}),
            InvalidMessage,
            "body",
            "is not one awen accepts",
        ),
        (
            frame_of(Ping(), body={"data": msgpack.ExtType(42, b"")}),
            InvalidMessage,
            "body",
            "unknown MessagePack extension type 42",
        ),
    ],
)
def test_bad_frames_raise_a_typed_error_naming_the_problem(frame, error, field, text):
    with pytest.raises(error) as caught:
        codec.decode(frame)
    assert caught.value.field == field
    assert text in str(caught.value)


def test_errors_carry_the_request_id_and_sender_when_the_header_is_readable():
    with pytest.raises(InvalidMessage) as caught:
        codec.decode(frame_of(Ping(), body={"datta": 1}))
    assert (caught.value.request_id, caught.value.sender) == (7, "client")


def test_frame_over_the_limit_is_refused_before_parsing():
    small = Codec(CATALOG, max_frame_bytes=1000)
    big = make_envelope(Ping(data=b"x" * 2000), sender="a", to="b", id=1)
    frame = codec.encode(big)
    with pytest.raises(FrameTooLarge, match=r"2[0-9]{3} bytes exceeds the limit of 1000"):
        small.decode(frame)
    with pytest.raises(FrameTooLarge):
        small.encode(big)


def test_validation_while_decoding_never_returns_a_silently_wrong_value():
    # A status whose uptime is a string must not decode as a Status at all.
    good = Status(
        name="a",
        kind="actor",
        pid=1,
        incarnation=2,
        uptime=1.0,
        handled=0,
        failed=0,
        malformed=0,
        in_flight=0,
        pending=0,
    )
    frame = frame_of(good, body={**msgspec.to_builtins(good), "uptime": "1.0"})
    with pytest.raises(InvalidMessage, match=r"body\.uptime"):
        codec.decode(frame)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data):
    # Anything else escaping (UnicodeDecodeError, IndexError, ...) fails the test.
    with contextlib.suppress(ProtocolError):
        codec.decode(data)


@settings(max_examples=500, deadline=None)
@given(messages(), st.data())
def test_truncated_and_corrupted_frames_raise_only_protocol_errors(body, data):
    frame = codec.encode(make_envelope(body, sender="a", to="b", id=5))
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(ProtocolError):
        codec.decode(frame[:cut])
    position = data.draw(st.integers(0, len(frame) - 1))
    flipped = bytearray(frame)
    flipped[position] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(ProtocolError):  # a flipped bit may still decode; it must not crash
        codec.decode(bytes(flipped))


def test_error_reply_carries_code_message_and_field():
    reply = Error(code=ErrorCode.INVALID, message="shots must be positive", field="body.shots")
    back = codec.decode(codec.encode(make_envelope(reply, sender="a", to="b", id=2, re=1))).body
    assert (back.code, back.message, back.field, back.error_code) == (
        "invalid",
        "shots must be positive",
        "body.shots",
        ErrorCode.INVALID,
    )


def test_catalog_refuses_bad_declarations():
    class NoName(Ping, frozen=True, kw_only=True):
        TYPE = "Ping"

    with pytest.raises(ValueError, match="dotted lower-case"):
        Catalog([NoName])

    class Twin(Ping, frozen=True, kw_only=True):
        TYPE = "sys.ping"

    with pytest.raises(ValueError, match="declared twice"):
        Catalog([Ping, Twin])


# --- the exported schema ---------------------------------------------------------------------


def test_schema_describes_every_message_and_the_envelope():
    schema = protocol_schema(CATALOG)
    assert schema["version"] == PROTOCOL_VERSION
    assert set(schema["messages"]) == set(CATALOG.names())
    assert schema["messages"]["sys.ping"]["reply"] == "sys.pong"
    assert schema["messages"]["sys.get_status"]["kind"] == "request"
    envelope = schema["$defs"]["Envelope"]
    assert set(envelope["required"]) >= {"v", "id", "type", "from", "to", "ts", "body"}
    assert set(envelope["properties"]["type"]["enum"]) == set(CATALOG.names())
    assert set(schema["error_codes"]) == {code.value for code in ErrorCode}
    heartbeat = schema["$defs"]["Heartbeat"]
    assert heartbeat["properties"]["interval"]["minimum"] == 0
    assert "pid" in heartbeat["required"]


def test_awen_protocol_schema_prints_the_schema(capsys):
    assert awen_main(["protocol", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(protocol_schema(CATALOG)))


def test_awen_protocol_decode_explains_a_frame(capsys):
    frame = codec.encode(make_envelope(GetStatus(), sender="c", to="alpha", id=9))
    assert awen_main(["protocol", "decode", frame.hex()]) == 0
    assert "accepted" in capsys.readouterr().out
    assert awen_main(["protocol", "decode", frame_of(Ping(), v=3).hex()]) == 1
    assert "refused [unsupported-version]" in capsys.readouterr().out


def test_backoff_doubles_to_its_longest_and_jitters_within_its_bounds():
    import random

    from protocol import Backoff

    exact = Backoff(first=0.1, longest=1.0, jitter=0)
    assert [exact.delay(k) for k in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert exact.delay(10**9) == 1.0  # no overflow, however many tries
    spread = Backoff(first=0.1, longest=1.0, jitter=0.5)
    rng = random.Random(1)
    waits = [spread.delay(2, rng) for _ in range(1000)]
    assert 0.2 <= min(waits) < 0.25
    assert 0.55 < max(waits) <= 0.6
    assert list(zip(range(3), exact.delays(), strict=False)) == [(0, 0.1), (1, 0.2), (2, 0.4)]
