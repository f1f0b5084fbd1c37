"""Binary masks travel 8 pixels to a byte: lossless, transparent to every reader, and bounded when hostile."""

from __future__ import annotations

import numpy as np
import pytest

from dgan import protocol as P
from dgan.tensor_frames import MASK_BITS, tensor_wire_nbytes


def _frames(kind: P.Kind, tensors: dict[str, np.ndarray]) -> list:
    return P.encode(P.make(kind, "n0", tensors=tensors, meta={"chunk": 0, "chunks": 1} if kind == P.Kind.MASKS
                           else {}))


@pytest.mark.parametrize("kind", [P.Kind.FAKE_REQUEST, P.Kind.MASKS])
def test_binary_masks_cross_the_wire_in_an_eighth_of_the_bytes_and_come_back_equal(kind: P.Kind) -> None:
    masks = (np.random.default_rng(0).random((4, 64, 128)) > 0.7).astype(np.uint8)
    frames = _frames(kind, {"masks": masks})
    assert len(frames[2]) == masks.nbytes // 8 == tensor_wire_nbytes(kind, "masks", masks)
    assert P.peek_header(frames)["tensors"][0][0] == MASK_BITS
    got = P.decode(frames)
    assert set(got.tensors) == {"masks"} and np.array_equal(got.tensors["masks"], masks)


@pytest.mark.parametrize("masks", [
    np.full((2, 32, 32), 2, np.uint8),  # three classes: a bit per pixel cannot hold them
    np.ones((2, 32, 12), np.uint8),  # a width that is not a multiple of 8
])
def test_masks_that_cannot_be_packed_travel_as_they_are(masks: np.ndarray) -> None:
    frames = _frames(P.Kind.FAKE_REQUEST, {"masks": masks})
    assert len(frames[2]) == masks.nbytes == tensor_wire_nbytes(P.Kind.FAKE_REQUEST, "masks", masks)
    assert np.array_equal(P.decode(frames).tensors["masks"], masks)


def test_packed_masks_where_they_do_not_belong_or_too_large_are_refused_with_a_reason() -> None:
    bits = np.zeros((2, 32, 4), np.uint8)
    cases = [
        (P.Kind.FEEDBACK, {MASK_BITS: bits, "grad": np.zeros((2, 3, 32, 32), np.float16)}, "may stand only"),
        (P.Kind.FAKE_REQUEST, {"masks": np.full((2, 32, 32), 2, np.uint8), MASK_BITS: bits}, "never beside"),
        (P.Kind.FAKE_REQUEST, {MASK_BITS: np.zeros((2, 32), np.uint8)}, "rank 3"),
        (P.Kind.FAKE_REQUEST, {MASK_BITS: np.zeros((2, 32, 4), np.float16)}, "must be uint8"),
    ]
    for kind, tensors, reason in cases:
        with pytest.raises(P.ProtocolError, match=reason) as err:
            P.decode(P.encode(P.make(kind, "n0", tensors=tensors, meta={"losses": {}})))
        assert err.value.code == P.ErrorCode.BAD_TENSOR
    small = P.Limits(max_message_bytes=64 * 1024)
    bomb = P.encode(P.make(P.Kind.FAKE_REQUEST, "n0", tensors={MASK_BITS: np.full((1, 256, 16), 255, np.uint8)}))
    P.decode(bomb, small)  # 4 KiB packed, 32 KiB unpacked: within the limit
    big = P.encode(P.make(P.Kind.FAKE_REQUEST, "n0", tensors={MASK_BITS: np.zeros((2, 1024, 16), np.uint8)}))
    with pytest.raises(P.ProtocolError, match="unpacks to") as err:
        P.decode(big, small)  # 32 KiB on the wire, 256 KiB once unpacked
    assert err.value.code == P.ErrorCode.TOO_LARGE
