"""RAD's per-iteration rules (Resource-Aware Dynamic; Bari, Hegde, de Veciana, arXiv 2508.01002; REFERENCES §2).

RAD is throughput-optimal under mild conditions and ignores latency SLOs. Its two principles, as schedctl reads
them (the paper states them for a queueing model; the authors ship no RAD code, so the concrete rules below are
ours, kept as close to the two principles as an iteration-level scheduler allows):

* Optimal tiling. A GPU multiplies in tiles of ``tile_tokens`` rows, so a batch of n tokens costs about as much
  as ``ceil(n / tile) · tile``. A prefill-only batch takes ``tiled_budget`` tokens (the budget rounded down to
  whole tiles), so full batches fill their tiles exactly; a decode batch's last partial tile is topped up with
  prefill tokens (``tile_filler``), which ride along for free.
* Dynamic resource allocation. Prefill-only and decode batches alternate by the queues' state: a cycle is at most
  N (``prefill_batches_per_cycle``) prefill-only batches, then one batch of the running decodes. A phase with no
  work is skipped, so with nothing waiting RAD runs decode batches back to back and with nothing decoding it runs
  prefill batches back to back.

Why hand-written: no serving library implements RAD (see ``policies/slai.py``).
"""

from __future__ import annotations

from typing import Literal

Phase = Literal["prefill", "decode"]

DEFAULT_TILE_TOKENS = 128  # when neither the spec nor the engine knows the GPU's tile


def tiled_budget(budget_tokens: int, tile_tokens: int) -> int:
    """The budget rounded down to whole tiles (the budget itself when it is smaller than one tile)."""
    return budget_tokens // tile_tokens * tile_tokens or budget_tokens


def tile_filler(n_decodes: int, tile_tokens: int, budget_tokens: int) -> int:
    """Prefill tokens that fill a decode batch's last partial tile, within the tiled budget."""
    if n_decodes <= 0:
        return 0
    padded = -(-n_decodes // tile_tokens) * tile_tokens
    return max(0, min(padded, tiled_budget(budget_tokens, tile_tokens)) - n_decodes)


def next_phase(
    prefill_batches_in_cycle: int, per_cycle: int, has_decodes: bool, has_prefill_work: bool
) -> Phase | None:
    """Which batch comes next: prefill while the cycle has room for one (or nothing decodes), else decode."""
    if has_prefill_work and (prefill_batches_in_cycle < per_cycle or not has_decodes):
        return "prefill"
    if has_decodes:
        return "decode"
    return None
