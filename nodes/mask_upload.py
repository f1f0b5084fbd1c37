"""One node's masks, uploaded chunk by chunk: bounded memory, and a new upload replaces an unfinished one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_MASK_CHUNKS = 10_000


@dataclass
class MaskUpload:
    max_bytes: int  # all chunks of one upload together
    chunks: dict[int, np.ndarray] = field(default_factory=dict)
    total: int = 0  # the chunk count of the upload in progress
    nbytes: int = 0  # bytes held in ``chunks``: kept as they come, not summed again per chunk

    def add(self, chunk: int, chunks: int, masks: np.ndarray) -> tuple[np.ndarray | None, str]:
        """Keep one chunk: (every mask once the last chunk is in, else None; why it was refused, else "")."""
        if not (0 <= chunk < chunks <= MAX_MASK_CHUNKS):
            return None, f"chunk {chunk} of {chunks} is out of range (at most {MAX_MASK_CHUNKS} chunks)"
        same_upload = self.total == chunks
        replaced = self.chunks[chunk].nbytes if same_upload and chunk in self.chunks else 0
        held = self.nbytes - replaced if same_upload else 0
        if held + masks.nbytes > self.max_bytes:
            return None, f"masks over {self.max_bytes // 2**20} MiB from one node are refused"
        if not same_upload:
            self.chunks, self.total = {}, chunks
        self.chunks[chunk] = np.array(masks)  # a copy: the frame is the transport's
        self.nbytes = held + self.chunks[chunk].nbytes
        if len(self.chunks) < chunks:
            return None, ""
        whole = np.concatenate([self.chunks[i] for i in range(chunks)])
        self.chunks, self.nbytes = {}, 0
        return whole, ""
