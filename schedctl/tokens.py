"""Token sequences: int64 arrays, and an allocator of fresh synthetic ids.

Every token sequence in schedctl (prompts, cache edges, outputs) is an ``array('q')``: slicing is a memcpy and
equality a C loop, about six times faster than tuples of Python ints, which is what lets the simulator match
prompts against its prefix cache a million times a minute. Depends on nothing else in schedctl.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np

TokenArray = array  # always typecode "q"

# Ids below this bound are "vocabulary" ids (what a real tokenizer would produce); synthetic ids that only need
# to be distinct (unique prompt parts, generated outputs) are handed out at or above it.
SYNTHETIC_TOKEN_BASE = 1 << 24


def as_tokens(tokens: Sequence[int]) -> TokenArray:
    """``tokens`` as an int64 array (the same object if it already is one)."""
    if type(tokens) is array and tokens.typecode == "q":
        return tokens
    return array("q", tokens)


class IdAllocator:
    """Hands out runs of consecutive, never-repeated token ids, starting at ``base``.

    Deterministic (a counter, no randomness). Runs are sliced from a pre-built block, so a run of n ids costs a
    memcpy rather than n Python ints.
    """

    _BLOCK = 1 << 20

    def __init__(self, base: int = SYNTHETIC_TOKEN_BASE) -> None:
        self.next_id = base
        self._block = array("q")
        self._block_start = base
        self._block_pos = 0

    def take(self, n: int) -> TokenArray:
        if n > self._BLOCK:
            run = array("q")
            run.frombytes(np.arange(self.next_id, self.next_id + n, dtype=np.int64).tobytes())
            self.next_id += n
            return run
        if self._block_pos + n > len(self._block):
            self._block = array("q")
            self._block.frombytes(np.arange(self.next_id, self.next_id + self._BLOCK, dtype=np.int64).tobytes())
            self._block_pos = 0
        run = self._block[self._block_pos : self._block_pos + n]
        self._block_pos += n
        self.next_id += n
        return run
