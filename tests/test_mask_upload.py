"""A node's chunked mask upload: order, replacement, and the byte cap, without a generator."""

from __future__ import annotations

import numpy as np

from nodes.mask_upload import MAX_MASK_CHUNKS, MaskUpload


def _chunk(value: int, n: int = 2) -> np.ndarray:
    return np.full((n, 8, 8), value, np.uint8)


def test_chunks_in_any_order_give_the_masks_in_chunk_order_and_free_what_they_held() -> None:
    up = MaskUpload(max_bytes=10_000)
    assert up.add(2, 3, _chunk(2)) == (None, "")
    assert up.add(0, 3, _chunk(0)) == (None, "")
    whole, problem = up.add(1, 3, _chunk(1))
    assert problem == "" and whole is not None
    assert [int(m[0, 0]) for m in whole] == [0, 0, 1, 1, 2, 2]
    assert up.chunks == {} and up.nbytes == 0
    again, _ = up.add(0, 1, _chunk(5))  # a later upload starts afresh
    assert again is not None and len(again) == 2 and int(again[0, 0, 0]) == 5


def test_a_resent_chunk_replaces_itself_and_a_new_upload_drops_the_unfinished_one() -> None:
    up = MaskUpload(max_bytes=3 * 128)  # three chunks of 2 masks of 64 bytes
    for _ in range(5):  # the same chunk again and again: counted once, never over the cap
        assert up.add(0, 3, _chunk(7)) == (None, "")
    assert up.nbytes == 128
    assert up.add(0, 2, _chunk(9)) == (None, "")  # another chunk count: a new upload
    assert up.total == 2 and up.nbytes == 128 and int(up.chunks[0][0, 0, 0]) == 9
    whole, _ = up.add(1, 2, _chunk(9))
    assert whole is not None and len(whole) == 4


def test_out_of_range_chunks_and_uploads_over_the_cap_are_refused_and_keep_what_was_held() -> None:
    up = MaskUpload(max_bytes=256)
    for chunk, chunks in ((3, 3), (-1, 3), (0, 0), (0, MAX_MASK_CHUNKS + 1)):
        whole, problem = up.add(chunk, chunks, _chunk(1))
        assert whole is None and "out of range" in problem
    assert up.add(0, 4, _chunk(1)) == (None, "") and up.add(1, 4, _chunk(1)) == (None, "")
    whole, problem = up.add(2, 4, _chunk(1, n=3))
    assert whole is None and "MiB from one node are refused" in problem
    assert up.nbytes == 256 and sorted(up.chunks) == [0, 1]
