"""The wire protocol: round trips, and hostile bytes always give a typed error."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgan import protocol as P

MASKS = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
TENSORS_FOR = {
    P.Kind.MASKS: {"masks": MASKS},
    P.Kind.FAKE_REQUEST: {"masks": MASKS},
    P.Kind.FAKES: {"fakes": np.linspace(-1, 1, 2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)},
    P.Kind.FEEDBACK: {"grad": np.ones((2, 3, 8, 8), np.float16)},
}
META_FOR = {
    P.Kind.HELLO: {"role": "node", "dataset_size": 10},
    P.Kind.ERROR: {"code": 3, "reason": "bad"},
    P.Kind.FEEDBACK: {"losses": {"d_real": 0.5, "g_l1": 0.1}},
    P.Kind.MASKS: {"chunk": 0, "chunks": 1},
    P.Kind.WELCOME: {"config": {"size": 128}},
    P.Kind.NODE_JOINED: {"node": "a"},
    P.Kind.NODE_LEFT: {"node": "a", "reason": "expired"},
}


def valid(kind: P.Kind) -> P.Message:
    """A fixed valid message (fixed id and time, so hypothesis sees the same bytes every time)."""
    return P.Message(kind, "node-1", run_id="run", msg_id=42, step=7, reply_to=3, sent_at=1.5e9,
                     meta=dict(META_FOR.get(kind, {})), tensors=dict(TENSORS_FOR.get(kind, {})))


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(P.frame_view(f)) for f in frames]


@pytest.mark.parametrize("kind", list(P.Kind))
def test_every_kind_round_trips(kind: P.Kind) -> None:
    msg = valid(kind)
    out = P.decode(as_bytes(P.encode(msg)))
    assert (out.kind, out.sender, out.run_id, out.step, out.reply_to, out.msg_id) == (
        kind, "node-1", "run", 7, 3, 42)
    assert out.meta == msg.meta
    assert out.tensors.keys() == msg.tensors.keys()
    for name, arr in msg.tensors.items():
        assert out.tensors[name].dtype == arr.dtype
        np.testing.assert_array_equal(out.tensors[name], arr)


@given(dtype=st.sampled_from(list(P.WIRE_DTYPES)),
       shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       meta=st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**40, 2**40), st.text(max_size=8),
                                                           st.floats(allow_nan=False), st.booleans(), st.none()),
                            max_size=4))
def test_any_wire_tensor_and_meta_round_trip(dtype: str, shape: list[int], meta: dict) -> None:
    arr = (np.arange(math.prod(shape)) % 7).astype(P.WIRE_DTYPES[dtype]).reshape(shape)
    msg = P.make(P.Kind.STATUS, "g", meta=meta, tensors={"t": arr})
    out = P.decode(as_bytes(P.encode(msg)))
    np.testing.assert_array_equal(out.tensors["t"], arr)
    assert out.meta == meta


def test_tensors_decode_without_copy() -> None:
    frames = as_bytes(P.encode(valid(P.Kind.FEEDBACK)))
    out = P.decode(frames)
    assert np.shares_memory(out.tensors["grad"], np.frombuffer(frames[2], np.uint8))


def test_big_endian_input_is_sent_little_endian() -> None:
    arr = np.arange(6, dtype=">f4").reshape(1, 1, 2, 3)
    out = P.decode(as_bytes(P.encode(P.make(P.Kind.FEEDBACK, "n", meta={"losses": {}}, tensors={"grad": arr}))))
    np.testing.assert_array_equal(out.tensors["grad"], arr)
    assert out.tensors["grad"].dtype == np.dtype("<f4")


def test_unsupported_dtype_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="not a wire dtype"):
        P.encode(P.make(P.Kind.STATUS, "g", tensors={"b": np.zeros(3, bool)}))


def _header(frames: list[bytes]) -> dict:
    return msgpack.unpackb(frames[1], raw=False)


def _with_header(frames: list[bytes], **changes: object) -> list[bytes]:
    h = _header(frames)
    h.update(changes)
    return [frames[0], msgpack.packb(h), *frames[2:]]


@pytest.mark.parametrize(("mutate", "code"), [
    (lambda f: [b"DGAN/0", *f[1:]], P.ErrorCode.BAD_VERSION),
    (lambda f: f[:1], P.ErrorCode.BAD_FRAMES),
    (lambda f: [f[0], b"\xc1garbage", *f[2:]], P.ErrorCode.BAD_HEADER),
    (lambda f: [f[0], msgpack.packb([1, 2]), *f[2:]], P.ErrorCode.BAD_HEADER),
    (lambda f: _with_header(f, kind=99), P.ErrorCode.BAD_KIND),
    (lambda f: _with_header(f, sender=5), P.ErrorCode.BAD_HEADER),
    (lambda f: _with_header(f, step=-1), P.ErrorCode.BAD_HEADER),
    (lambda f: _with_header(f, extra=1), P.ErrorCode.BAD_HEADER),
    (lambda f: _with_header(f, meta={"losses": {"x": b"bytes"}}), P.ErrorCode.BAD_HEADER),
    (lambda f: _with_header(f, meta={}), P.ErrorCode.BAD_HEADER),
    (lambda f: _with_header(f, tensors=[["grad", "float64", [2, 3, 8, 8], 3072]]), P.ErrorCode.BAD_TENSOR),
    (lambda f: _with_header(f, tensors=[["grad", "float16", [2, 3, 8, 8], 10]]), P.ErrorCode.BAD_TENSOR),
    (lambda f: _with_header(f, tensors=[["grad", "float16", [2**30, 2**30, 8, 8], 2**63]]), P.ErrorCode.BAD_TENSOR),
    (lambda f: _with_header(f, tensors=[["grad", "float16", [2, 3, 8, 4], 384]]), P.ErrorCode.BAD_TENSOR),
    (lambda f: _with_header(f, tensors=[["other", "float16", [2, 3, 8, 8], 768]]), P.ErrorCode.BAD_TENSOR),
    (lambda f: _with_header(f, tensors=[["grad", "float16", [6, 8, 8], 768]]), P.ErrorCode.BAD_TENSOR),
    (lambda f: _with_header(f, id=True), P.ErrorCode.BAD_HEADER),  # a bool is not an id
    (lambda f: _with_header(f, reply_to=2**63), P.ErrorCode.BAD_HEADER),
    (lambda f: _with_header(f, meta={"losses": {}, b"x": 1}), P.ErrorCode.BAD_HEADER),  # a bytes key at the top
    (lambda f: _with_header(f, meta={"losses": {}, "x": [1, b"b"]}), P.ErrorCode.BAD_HEADER),
    (lambda f: [*_with_header(f, tensors=[["grad", "float16", [2, 3, 8, True], 96]])[:2], f[2][:96]],
     P.ErrorCode.BAD_TENSOR),  # only the bool can refuse it: its bytes agree
    (lambda f: _with_header(f, tensors=[["grad", "float16", [2, 3, -8, -8], 768]]), P.ErrorCode.BAD_TENSOR),
    (lambda f: [*_with_header(f, tensors=[["grad", "float16", [2, 3, 2**31, 0], 0]])[:2], b""],
     P.ErrorCode.BAD_TENSOR),
    (lambda f: [*f, b"extra"], P.ErrorCode.BAD_FRAMES),
    (lambda f: [f[0], f[1], f[2][:-1]], P.ErrorCode.BAD_TENSOR),
])
def test_malformed_feedback_gets_the_right_error_code(mutate, code) -> None:
    frames = as_bytes(P.encode(valid(P.Kind.FEEDBACK)))
    for arrays in (True, False):  # the broker's header-only decode refuses the same, with the same code
        with pytest.raises(P.ProtocolError) as err:
            P.decode(mutate(frames), arrays=arrays)
        assert err.value.code == code
        assert err.value.reason  # a sentence for a person


def test_a_whole_number_time_and_nested_metadata_are_accepted() -> None:
    """The decode's fast paths take the usual types only; the rest goes through the full checks, which accept these."""
    frames = as_bytes(P.encode(valid(P.Kind.FEEDBACK)))
    msg = P.decode(_with_header(frames, time=5, meta={"losses": {"g": 1.0}, "x": [None, True, {"y": "z"}]}))
    assert msg.sent_at == 5.0 and msg.meta["x"][2] == {"y": "z"}


def test_size_limits_apply() -> None:
    frames = as_bytes(P.encode(valid(P.Kind.FEEDBACK)))
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frames, P.Limits(max_message_bytes=100))
    assert err.value.code == P.ErrorCode.TOO_LARGE
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frames, P.Limits(max_header_bytes=10))
    assert err.value.code == P.ErrorCode.TOO_LARGE


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_random_frames_only_ever_raise_protocol_error(frames: list[bytes]) -> None:
    try:
        P.decode(frames)
    except P.ProtocolError as exc:
        assert isinstance(exc.code, P.ErrorCode)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(P.Kind)), data=st.data())
def test_mutated_valid_messages_decode_or_raise_protocol_error(kind: P.Kind, data: st.DataObject) -> None:
    frames = as_bytes(P.encode(valid(kind)))
    i = data.draw(st.integers(0, len(frames) - 1))
    raw = bytearray(frames[i])
    for _ in range(data.draw(st.integers(1, 4))):
        if raw and data.draw(st.booleans()):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
        else:
            cut = data.draw(st.integers(0, len(raw)))
            raw = raw[:cut] + data.draw(st.binary(max_size=8))
    frames[i] = bytes(raw)
    try:
        msg = P.decode(frames)
    except P.ProtocolError as exc:
        assert isinstance(exc.code, P.ErrorCode)
    else:
        assert isinstance(msg.kind, P.Kind)


WIRE_CASES = [*((k, None) for k in P.Kind), (P.Kind.FAKE_REQUEST, "packed"), (P.Kind.FEEDBACK, "int8")]


def _wire_case(kind: P.Kind, variant: str | None) -> P.Message:
    if variant == "packed":  # binary masks: they travel as mask_bits
        return P.make(kind, "n0", tensors={"masks": (np.arange(2 * 16 * 16).reshape(2, 16, 16) % 3 == 0)
                                            .astype(np.uint8)})
    if variant == "int8":
        return P.make(kind, "n0", reply_to=3, meta={"losses": {}}, tensors={
            "grad": np.arange(2 * 3 * 8 * 8, dtype=np.int64).reshape(2, 3, 8, 8).astype(np.int8),
            "grad_scales": np.ones(2, np.float32)})
    return valid(kind)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(WIRE_CASES), data=st.data())
def test_the_brokers_header_only_decode_refuses_exactly_what_the_full_decode_refuses(
        case: tuple[P.Kind, str | None], data: st.DataObject) -> None:
    frames = as_bytes(P.encode(_wire_case(*case)))
    i = data.draw(st.integers(0, len(frames) - 1))
    raw = bytearray(frames[i])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        raw[pos:pos + 1] = bytes([data.draw(st.integers(0, 255))])
    frames[i] = bytes(raw)
    codes = []
    for arrays in (True, False):
        try:
            msg = P.decode(frames, arrays=arrays)
            codes.append(None)
            assert bool(msg.tensors) == (arrays and bool(frames[2:]))  # header-only: no arrays built
        except P.ProtocolError as exc:
            codes.append(exc.code)
    assert codes[0] == codes[1]


def test_header_only_decode_builds_nothing_and_the_full_one_unpacks_the_masks() -> None:
    masks = (np.random.default_rng(0).random((8, 128, 128)) > 0.5).astype(np.uint8)
    frames = as_bytes(P.encode(P.make(P.Kind.FAKE_REQUEST, "n0", tensors={"masks": masks})))
    assert P.decode(frames, arrays=False).tensors == {}
    assert np.array_equal(P.decode(frames).tensors["masks"], masks)


def test_an_empty_tensor_with_overflowing_dimensions_is_a_protocol_error() -> None:
    frames = as_bytes(P.encode(valid(P.Kind.FEEDBACK)))
    header = msgpack.unpackb(frames[1])
    for dtype in ("float16", "int8"):
        header["tensors"] = [["grad", dtype, [0, 2**31 - 1, 2**31 - 1, 2**31 - 1], 0]]
        for arrays in (True, False):  # the broker refuses it too: it must not route what the consumer refuses
            with pytest.raises(P.ProtocolError) as err:
                P.decode([frames[0], msgpack.packb(header), b""], arrays=arrays)
            assert err.value.code == P.ErrorCode.BAD_TENSOR


def test_too_many_frames_are_refused_before_any_is_read() -> None:
    with pytest.raises(P.ProtocolError) as err:
        P.decode([P.PROTOCOL_VERSION] + [b""] * (P.DEFAULT_LIMITS.max_tensors + 2))
    assert err.value.code == P.ErrorCode.BAD_FRAMES and "frames exceed" in err.value.reason


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "x" * 65, "ünïcode", "a b", "node\x00"])
def test_hello_names_that_could_steer_a_path_are_refused(name: str) -> None:
    msg = valid(P.Kind.HELLO)
    msg.sender = name
    with pytest.raises(P.ProtocolError, match="a peer needs a name"):
        P.decode(as_bytes(P.encode(msg)))


def test_file_stems_come_from_valid_names_only() -> None:
    assert P.file_stem("node-1.a_b") == "node-1.a_b"
    for hostile in ("../x", "..", "a/b", "x" * 200):
        stem = P.file_stem(hostile)
        assert stem.startswith("peer-") and "/" not in stem and stem != P.file_stem(hostile + "y")


def test_routing_frames_stack_and_split() -> None:
    frames = as_bytes(P.encode(valid(P.Kind.HEARTBEAT)))
    route, rest = P.split_route(P.stack_route(b"node-a", frames))
    assert route == b"node-a" and rest == frames
    with pytest.raises(P.ProtocolError):
        P.split_route([])
