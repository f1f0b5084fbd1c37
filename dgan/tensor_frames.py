"""The tensor frames of a message: descriptor checks, arrays, and binary masks packed 8 pixels to a byte.

Split from :mod:`dgan.protocol` (which imports it inside ``encode`` and
``decode``): every check here works on the descriptors alone, so the broker
can validate a message without building an array (``decode(..., arrays=False)``)
and the receiver that consumes it still builds and checks everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dgan.protocol import KIND_TENSORS, WIRE_DTYPES, ErrorCode, Kind, Limits, ProtocolError, frame_view

MASK_BITS = "mask_bits"  # binary masks on the wire: 8 pixels per byte (``encode`` packs, ``decode`` unpacks)
MASK_KINDS = (Kind.MASKS, Kind.FAKE_REQUEST)
_ITEMSIZE = {name: dt.itemsize for name, dt in WIRE_DTYPES.items()}
_INT_SET = frozenset((int,))
_DIM_LIMIT = 2**31


def packable(kind: Kind, name: str, arr: np.ndarray) -> bool:
    """Binary uint8 masks whose width is a multiple of 8 travel packed: lossless, an eighth of the bytes."""
    return (name == "masks" and kind in MASK_KINDS and arr.dtype == np.uint8 and arr.ndim == 3
            and arr.size > 0 and arr.shape[2] % 8 == 0 and int(arr.max()) <= 1)


def tensor_wire_nbytes(kind: Kind, name: str, arr: np.ndarray) -> int:
    """The bytes ``arr`` takes in a ``kind`` message on the wire (packed masks: an eighth)."""
    return arr.size // 8 if packable(kind, name, arr) else int(arr.nbytes)


def decode_tensors(kind: Kind, descs: list[Any], frames: Sequence[Any], limits: Limits,
                   arrays: bool = True) -> dict[str, np.ndarray]:
    if len(descs) > limits.max_tensors:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"{len(descs)} tensors exceed the limit of {limits.max_tensors}")
    if len(descs) != len(frames):
        raise ProtocolError(ErrorCode.BAD_FRAMES,
                            f"header describes {len(descs)} tensor(s) but {len(frames)} tensor frame(s) arrived")
    specs: dict[str, tuple[str, list[int]]] = {}
    for i, desc in enumerate(descs):
        name, spec = _check_descriptor(i, desc, frames[i], specs, limits)
        specs[name] = spec
    packed = specs.pop(MASK_BITS, None)
    if packed is not None:
        specs["masks"] = _unpacked_spec(kind, packed, "masks" in specs, limits)
    for name, (dtypes, ranks) in KIND_TENSORS.get(kind, {}).items():
        spec = specs.get(name)
        if spec is None:
            raise ProtocolError(ErrorCode.BAD_TENSOR, f"{kind.name} needs a tensor named {name!r}")
        if spec[0] not in dtypes or len(spec[1]) not in ranks:
            raise ProtocolError(ErrorCode.BAD_TENSOR,
                                f"{kind.name} tensor {name!r} must be {'/'.join(dtypes)} with rank "
                                f"{'/'.join(map(str, ranks))}, got {spec[0]}{spec[1]}")
    if not arrays:
        return {}
    out: dict[str, np.ndarray] = {}
    for (name, dtname, shape, _), frame in zip(descs, frames, strict=True):  # every shape is buildable (checked)
        dtype = WIRE_DTYPES[dtname]
        arr = np.frombuffer(frame_view(frame), dtype=dtype).reshape(shape) if math.prod(shape) else \
            np.zeros(shape, dtype)
        if name == MASK_BITS:
            name, arr = "masks", np.unpackbits(arr, axis=2)
        out[name] = arr
    return out


def _check_descriptor(i: int, desc: Any, frame: Any, seen: dict[str, Any],
                      limits: Limits) -> tuple[str, tuple[str, list[int]]]:
    if type(desc) is not list or len(desc) != 4:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"tensor descriptor {i} must be [name, dtype, shape, nbytes]")
    name, dtname, shape, nbytes = desc
    if not isinstance(name, str) or not name or len(name) > limits.max_name_len or name in seen:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"tensor {i} has a missing, duplicate or overlong name")
    if not isinstance(dtname, str) or dtname not in WIRE_DTYPES:
        raise ProtocolError(ErrorCode.BAD_TENSOR,
                            f"tensor {name!r}: dtype {dtname!r} is not one of {', '.join(WIRE_DTYPES)}")
    if (type(shape) is not list or len(shape) > limits.max_ndim or not _INT_SET.issuperset(map(type, shape))
            or (shape and (min(shape) < 0 or max(shape) >= _DIM_LIMIT))):  # exact ints: a bool is not a dimension
        raise ProtocolError(ErrorCode.BAD_TENSOR,
                            f"tensor {name!r}: shape must be a list of at most {limits.max_ndim} "
                            "non-negative integers")
    expected = math.prod(shape) * _ITEMSIZE[dtname]
    if type(nbytes) is not int or nbytes != expected:
        raise ProtocolError(ErrorCode.BAD_TENSOR,
                            f"tensor {name!r}: declared {nbytes!r} bytes but {dtname}{shape} takes {expected}")
    if expected == 0:  # an empty tensor whose other dimensions overflow: refused here, as building it would be
        try:
            np.empty(shape, WIRE_DTYPES[dtname])
        except (ValueError, MemoryError):
            raise ProtocolError(ErrorCode.BAD_TENSOR, f"tensor {name!r}: shape {shape} cannot be an array") from None
    got = len(frame)  # bytes, zmq.Frame and byte memoryviews all measure in bytes
    if got != expected:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"tensor {name!r}: frame has {got} bytes, descriptor says "
                                                  f"{expected}")
    return name, (dtname, shape)


def _unpacked_spec(kind: Kind, packed: tuple[str, list[int]], both: bool, limits: Limits) -> tuple[str, list[int]]:
    dtname, shape = packed
    if kind not in MASK_KINDS or both:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"{MASK_BITS!r} may stand only for the masks of MASKS or "
                                                  "FAKE_REQUEST, and never beside them")
    if dtname != "uint8" or len(shape) != 3:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"{MASK_BITS!r} must be uint8 with rank 3, got {dtname}{shape}")
    if math.prod(shape) * 8 > limits.max_message_bytes:  # unpacking multiplies by 8: bound it like any message
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{MASK_BITS!r} unpacks to {math.prod(shape) * 8} bytes, over "
                                                 f"the limit of {limits.max_message_bytes}")
    return "uint8", [shape[0], shape[1], shape[2] * 8]
