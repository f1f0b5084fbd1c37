"""The dgan wire protocol: one module that every process imports.

A message on the wire is a ZeroMQ multipart message::

    [PROTOCOL_VERSION, msgpack header, tensor frame 0, tensor frame 1, ...]

The header names the kind, the run, the sender, ids, the generator step, a
timestamp, small metadata (losses, config) and, for every tensor frame, its
name, dtype, shape and byte length.  Tensor bytes never pass through msgpack:
they travel as their own frames, zero-copy, and are decoded with
``np.frombuffer`` straight on the received frame.

Everything received from a peer goes through :func:`decode`, which validates it
completely and raises :class:`ProtocolError` (a code and a sentence a person
understands) instead of ever asserting.  Nothing here pickles.
"""

from __future__ import annotations

import enum
import itertools
import math
import operator
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = b"DGAN/1"

WIRE_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("|u1"),
    "int8": np.dtype("|i1"),
    "int64": np.dtype("<i8"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
}
_DTYPE_NAMES = {dt: name for name, dt in WIRE_DTYPES.items()}


class Kind(enum.IntEnum):
    """Message kinds. Codes are part of the wire format: never renumber."""

    HELLO = 1  # peer -> broker (-> generator for nodes): register, with role
    WELCOME = 2  # generator -> node: accepted, with the run config
    MASKS = 3  # node -> generator: a chunk of the node's mask set
    FAKE_REQUEST = 4  # node -> generator: masks to turn into fakes
    FAKES = 5  # generator -> node: synthetic images for a request
    FEEDBACK = 6  # node -> generator: d(loss)/d(fakes) and loss scalars
    HEARTBEAT = 7  # both ways: liveness
    STATUS = 8  # generator -> everyone (broadcast)
    ERROR = 9  # anyone -> the sender of a bad or undeliverable message
    GOODBYE = 10  # peer leaves (or generator ends the run)
    NODE_JOINED = 11  # broker -> generator
    NODE_LEFT = 12  # broker -> generator


class ErrorCode(enum.IntEnum):
    BAD_VERSION = 1
    BAD_FRAMES = 2
    BAD_HEADER = 3
    BAD_TENSOR = 4
    TOO_LARGE = 5
    BAD_KIND = 6
    NOT_REGISTERED = 7
    NO_GENERATOR = 8
    UNREACHABLE = 9
    BACKPRESSURE = 10
    NAME_IN_USE = 11
    REJECTED = 12
    SPOOFED_SENDER = 13
    FORBIDDEN = 14
    INTERNAL = 15


ROLES = ("node", "generator", "monitor")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def valid_name(name: object) -> bool:
    """Peer names become parts of file names: a short word of [A-Za-z0-9_.-], never "." or ".."."""
    return type(name) is str and NAME_PATTERN.fullmatch(name) is not None and name not in (".", "..")


def file_stem(name: str) -> str:
    """``name`` if it is a valid peer name, else a digest of it: names from logs or peers never steer a path."""
    if valid_name(name):
        return name
    import hashlib

    return "peer-" + hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:12]


NAME_RULE = "a name of 1 to 64 characters from A-Z a-z 0-9 _ . - (not '.' or '..')"

# Which tensors each kind must carry, with the dtypes and ranks allowed.
_TensorRule = tuple[tuple[str, ...], tuple[int, ...]]
KIND_TENSORS: dict[Kind, dict[str, _TensorRule]] = {
    Kind.MASKS: {"masks": (("uint8",), (3,))},
    Kind.FAKE_REQUEST: {"masks": (("uint8",), (3,))},
    Kind.FAKES: {"fakes": (("float16", "float32", "uint8"), (4,))},
    Kind.FEEDBACK: {"grad": (("float16", "float32", "int8"), (4,))},  # int8 also carries "grad_scales"
}
# Metadata keys each kind must carry, with their types.
KIND_META: dict[Kind, dict[str, tuple[type, ...]]] = {
    Kind.HELLO: {"role": (str,)},
    Kind.ERROR: {"code": (int,), "reason": (str,)},
    Kind.FEEDBACK: {"losses": (dict,)},
    Kind.MASKS: {"chunk": (int,), "chunks": (int,)},
    Kind.WELCOME: {"config": (dict,)},
    Kind.NODE_JOINED: {"node": (str,)},
    Kind.NODE_LEFT: {"node": (str,), "reason": (str,)},
}


@dataclass(frozen=True)
class Limits:
    """Size limits applied to everything a peer sends."""

    max_message_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_tensors: int = 8
    max_ndim: int = 5
    max_name_len: int = 128


DEFAULT_LIMITS = Limits()


class ProtocolError(Exception):
    """A peer sent something invalid. Carries the code for the ERROR reply."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Message:
    """One decoded protocol message."""

    kind: Kind
    sender: str
    run_id: str = ""
    msg_id: int = 0
    reply_to: int = 0
    step: int = 0
    sent_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    received_at: float = 0.0  # local monotonic time the link decoded it (never on the wire)

    def nbytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tensors.values())


# Ids are unique per process *start*: a random epoch in the high bits, a counter below. A FEEDBACK that
# outlives a generator restart can then never match a request of the new process, and logs that span
# restarts still match replies to requests by id.
EPOCH = secrets.randbelow(2**30) + 1
_ids = itertools.count(1)


def next_id() -> int:
    """Process-wide message id: ``EPOCH << 32`` plus a counter (< 2**62)."""
    return (EPOCH << 32) + (next(_ids) & 0xFFFFFFFF)


def epoch_of(msg_id: int) -> int:
    """The process start an id was made in (0 for ids from before epochs)."""
    return msg_id >> 32


def make(kind: Kind, sender: str, *, run_id: str = "", reply_to: int = 0, step: int = 0,
         meta: Mapping[str, Any] | None = None,
         tensors: Mapping[str, np.ndarray] | None = None) -> Message:
    """Build a message with a fresh id and the current wall time."""
    return Message(kind=kind, sender=sender, run_id=run_id, msg_id=next_id(),
                   reply_to=reply_to, step=step, sent_at=time.time(),
                   meta=dict(meta or {}), tensors=dict(tensors or {}))


def error(sender: str, code: ErrorCode, reason: str, *, reply_to: int = 0,
          run_id: str = "", **extra: Any) -> Message:
    """An ERROR message: a code and a sentence a person understands."""
    return make(Kind.ERROR, sender, run_id=run_id, reply_to=reply_to,
                meta={"code": int(code), "reason": reason, **extra})


# --------------------------------------------------------------------- encode


def encode(msg: Message) -> list[Any]:
    """Frames for ``msg``: version, header, then one zero-copy frame per tensor.

    Tensor frames are memoryviews of contiguous arrays: send them with
    ``copy=False`` and keep the arrays alive until sent (pyzmq holds a
    reference for zero-copy sends).
    """
    from dgan.tensor_frames import MASK_BITS, packable  # a module of its own; it imports this one

    descs = []
    frames: list[Any] = []
    for name, arr in msg.tensors.items():
        arr = np.ascontiguousarray(arr)
        if packable(msg.kind, name, arr):
            name, arr = MASK_BITS, np.packbits(arr, axis=2)
        dtname = _DTYPE_NAMES.get(arr.dtype.newbyteorder("<"))
        if dtname is None:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} is not a wire dtype {sorted(WIRE_DTYPES)}")
        if arr.dtype != WIRE_DTYPES[dtname]:  # big-endian input: the wire is little-endian
            arr = arr.astype(WIRE_DTYPES[dtname])
        descs.append([name, dtname, list(arr.shape), int(arr.nbytes)])
        frames.append(memoryview(arr).cast("B") if arr.nbytes else b"")
    header = {
        "kind": int(msg.kind),
        "run": msg.run_id,
        "sender": msg.sender,
        "id": int(msg.msg_id),
        "reply_to": int(msg.reply_to),
        "step": int(msg.step),
        "time": float(msg.sent_at),
        "tensors": descs,
        "meta": msg.meta,
    }
    return [PROTOCOL_VERSION, msgpack.packb(header, use_bin_type=True), *frames]


# --------------------------------------------------------------------- decode


def frame_view(frame: Any) -> memoryview:
    """A view of a frame's bytes (zmq.Frame, bytes or memoryview: each exposes its bytes as a buffer)."""
    return memoryview(frame)


def peek_header(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Check the version and unpack the header only: what a router needs."""
    if len(frames) < 2:
        raise ProtocolError(ErrorCode.BAD_FRAMES,
                            f"a message needs a version frame and a header frame, got {len(frames)} frame(s)")
    version = memoryview(frames[0])
    if version != PROTOCOL_VERSION:
        shown = bytes(version[:16])
        raise ProtocolError(ErrorCode.BAD_VERSION,
                            f"protocol version {shown!r} is not supported; this peer speaks {PROTOCOL_VERSION!r}")
    raw = frames[1]  # msgpack reads any buffer: a zmq.Frame needs no view of its own
    if len(raw) > limits.max_header_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"header of {len(raw)} bytes exceeds the limit of {limits.max_header_bytes}")
    try:  # msgpack's length limits default to the buffer's length, which is at most max_header_bytes here
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types on hostile input
        raise ProtocolError(ErrorCode.BAD_HEADER, f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_HEADER, f"header must be a map, got {type(header).__name__}")
    return header


_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (int,), "run": (str,), "sender": (str,), "id": (int,), "reply_to": (int,),
    "step": (int,), "time": (float, int), "tensors": (list,), "meta": (dict,),
}
_HEADER_KEYS = frozenset(_HEADER_TYPES)
_HEADER_ITEMS = tuple(_HEADER_TYPES.items())
_header_values = operator.itemgetter(*_HEADER_TYPES)
_HEADER_USUAL = tuple(types[0] for types in _HEADER_TYPES.values())  # the types every peer here sends
_KINDS = {int(k): k for k in Kind}
_SCALARS = (type(None), bool, int, float, str)
_SCALAR_SET, _STR_SET = frozenset(_SCALARS), frozenset((str,))
_ID_LIMIT = 2**63


def _check_meta_value(value: Any, depth: int = 0) -> bool:
    t = type(value)
    if t in _SCALARS:
        return True
    if depth > 6:
        return False
    if t is list:
        return all(_check_meta_value(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and _check_meta_value(v, depth + 1) for k, v in value.items())
    return False


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS, arrays: bool = True) -> Message:
    """Validate ``frames`` completely and return the message.

    Raises :class:`ProtocolError` for anything malformed, never another
    exception type, whatever the bytes: a check this module forgot still
    becomes an ERROR for the sender, not a traceback in the receiver.
    ``arrays=False`` (the broker, which routes and never reads a tensor)
    checks every descriptor against its frame and the kind's tensor rules,
    but builds no arrays and unpacks no masks: ``tensors`` is then empty.
    """
    if len(frames) > limits.max_tensors + 2:  # before touching any frame
        raise ProtocolError(ErrorCode.BAD_FRAMES,
                            f"{len(frames)} frames exceed the limit of {limits.max_tensors + 2} (version, header, "
                            f"{limits.max_tensors} tensors)")
    try:
        return _decode(frames, limits, arrays)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(ErrorCode.BAD_FRAMES, f"undecodable message ({type(exc).__name__})") from None


def _decode(frames: Sequence[Any], limits: Limits, arrays: bool) -> Message:
    """Every check runs on each message; the common case takes a fast path (a comparison done in C) and only a
    message that fails it runs the full check, which names the fault. Both refuse exactly the same headers."""
    decode_tensors = _tensor_decoder or _load_tensor_decoder()
    total = 0
    for f in frames:
        total += len(f)  # bytes, zmq.Frame and byte memoryviews all measure in bytes
    if total > limits.max_message_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE,
                            f"message of {total} bytes exceeds the limit of {limits.max_message_bytes}")
    header = peek_header(frames, limits)
    if header.keys() != _HEADER_KEYS:
        missing = sorted(_HEADER_KEYS - header.keys())
        if missing:
            raise ProtocolError(ErrorCode.BAD_HEADER, f"header lacks field(s) {', '.join(missing)}")
        extra = sorted(str(k) for k in header.keys() - _HEADER_KEYS)
        raise ProtocolError(ErrorCode.BAD_HEADER, f"header has unknown field(s) {', '.join(extra[:5])}")
    if tuple(map(type, _header_values(header))) != _HEADER_USUAL:
        for key, types in _HEADER_ITEMS:
            if type(header[key]) not in types:  # exact types: a bool is not an int here
                raise ProtocolError(ErrorCode.BAD_HEADER,
                                    f"header field {key!r} must be {'/'.join(t.__name__ for t in types)}, "
                                    f"got {type(header[key]).__name__}")
    kind = _KINDS.get(header["kind"])
    if kind is None:
        raise ProtocolError(ErrorCode.BAD_KIND, f"unknown message kind {header['kind']}")
    if len(header["sender"]) > limits.max_name_len or len(header["run"]) > limits.max_name_len:
        raise ProtocolError(ErrorCode.BAD_HEADER, f"sender or run longer than {limits.max_name_len} characters")
    if kind == Kind.HELLO and not valid_name(header["sender"]):
        raise ProtocolError(ErrorCode.BAD_HEADER, f"HELLO from {header['sender'][:64]!r}: a peer needs {NAME_RULE}")
    if not (0 <= header["id"] < _ID_LIMIT and 0 <= header["reply_to"] < _ID_LIMIT and 0 <= header["step"] < _ID_LIMIT):
        for key in ("id", "reply_to", "step"):
            if not 0 <= header[key] < _ID_LIMIT:
                raise ProtocolError(ErrorCode.BAD_HEADER, f"header field {key!r} out of range")
    if not math.isfinite(header["time"]):
        raise ProtocolError(ErrorCode.BAD_HEADER, "header field 'time' is not finite")
    meta = header["meta"]
    # flat metadata (str keys, scalar values) passes in C; anything nested takes the recursive check
    flat = _STR_SET.issuperset(map(type, meta)) and _SCALAR_SET.issuperset(map(type, meta.values()))
    if meta and not flat and not _check_meta_value(meta):
        raise ProtocolError(ErrorCode.BAD_HEADER, "meta holds a value that is not str/int/float/bool/None/list/map")
    rules = KIND_META.get(kind)
    if rules:
        for key, types in rules.items():
            if type(meta.get(key)) not in types:
                raise ProtocolError(ErrorCode.BAD_HEADER,
                                    f"{kind.name} needs meta {key!r} of type {'/'.join(t.__name__ for t in types)}")
    tensors = decode_tensors(kind, header["tensors"], frames[2:], limits, arrays)
    return Message(kind=kind, sender=header["sender"], run_id=header["run"], msg_id=header["id"],
                   reply_to=header["reply_to"], step=header["step"], sent_at=float(header["time"]),
                   meta=meta, tensors=tensors)


_tensor_decoder: Any = None


def _load_tensor_decoder() -> Any:
    """:mod:`dgan.tensor_frames` imports this module, so it is imported on first use (once, not per message)."""
    global _tensor_decoder
    from dgan.tensor_frames import decode_tensors

    _tensor_decoder = decode_tensors
    return decode_tensors


# ------------------------------------------------------------------- routing


def stack_route(route: bytes, frames: Sequence[Any]) -> list[Any]:
    """Put one routing frame in front of a message (Majordomo style)."""
    return [route, *frames]


def split_route(frames: Sequence[Any]) -> tuple[bytes, list[Any]]:
    """Take the routing frame off the front of a message."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_FRAMES, "empty message")
    return bytes(frame_view(frames[0])), list(frames[1:])
