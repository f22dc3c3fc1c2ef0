"""The torch profiler on the CPU (marked `torch`: run with `-m torch` where torch is installed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from schedctl.cli import app
from schedctl.cli.common import fail_cleanly
from schedctl.sim.calibrate import read_steps_csv
from schedctl.sim.profiles import ModelProfile
from schedctl.sim.torch_profile import Point, ProfileGrid, _prefix_bias, prefix_causal_mask, profile_steps

pytestmark = pytest.mark.torch

TINY = ModelProfile(name="tiny", num_layers=2, hidden_size=256, num_attention_heads=4, num_kv_heads=2, head_dim=64,
                    intermediate_size=1024, vocab_size=4096, tied_embeddings=True)
TINY_ARGS = ["--layers", "2", "--hidden", "128", "--heads", "4", "--kv-heads", "2", "--intermediate", "256",
             "--vocab", "512"]


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


def test_times_grow_with_tokens(torch: Any) -> None:
    """A 128x larger prefill and a 64x larger decode batch over 32x longer contexts take clearly longer (medians)."""
    grid = ProfileGrid(prefill_tokens=[8, 1024], prefill_context_tokens=[0], decode_seqs=[1, 64],
                       decode_context_per_seq=[16, 512], warmup=2, repetitions=5)
    result = profile_steps(TINY, grid, device="cpu", threads=1, seed=0)
    t = {(r.prefill_tokens, r.decode_seqs, r.decode_context_tokens): r.seconds for r in result.rows}
    assert len(t) == 6 and all(s > 0 for s in t.values())
    assert t[(1024, 0, 0)] > 3 * t[(8, 0, 0)]
    assert t[(0, 64, 64 * 512)] > 3 * t[(0, 1, 16)]
    assert t[(0, 64, 64 * 512)] > t[(0, 64, 64 * 16)]  # same batch, 32x the context to attend over
    assert not result.skipped and "cpu" in result.device and "float32" in result.device


def test_rows_come_back_in_grid_order_with_the_grid_counts(torch: Any) -> None:
    grid = ProfileGrid(prefill_tokens=[4, 16], prefill_context_tokens=[0, 8], decode_seqs=[2],
                       decode_context_per_seq=[8], mixed=[(8, 3, 5)], warmup=0, repetitions=1, passes=2)
    result = profile_steps(TINY, grid, device="cpu", threads=1, seed=5)
    assert [r.model_dump(exclude={"seconds"}) for r in result.rows] == \
        [p.row(1.0).model_dump(exclude={"seconds"}) for p in grid.points()]
    assert result.rows[-1].decode_context_tokens == 15 and len(result.spreads) == len(result.rows)


def test_steps_over_the_kv_budget_are_skipped_not_run(torch: Any) -> None:
    grid = ProfileGrid(prefill_tokens=[8], decode_seqs=[1, 64], decode_context_per_seq=[4096], repetitions=1)
    big = Point(decode_seqs=64, decode_context_per_seq=4096)
    budget_gib = big.kv_tokens() * 2 * TINY.num_layers * TINY.kv_dim * 4 / 2**30 / 2  # half of what it needs
    result = profile_steps(TINY, grid, device="cpu", threads=1, max_kv_gib=budget_gib)
    assert [r.decode_seqs for r in result.rows] == [0, 1]
    assert len(result.skipped) == 1 and "KV cache over" in result.skipped[0]


def test_prefix_mask_gives_the_tail_of_full_causal_attention(torch: Any) -> None:
    """Prefill of e tokens after c cached ones == the last e rows of causal attention over all c + e."""
    assert prefix_causal_mask(torch, 2, 3).tolist() == [[True, True, True, True, False],
                                                        [True, True, True, True, True]]
    torch.manual_seed(0)
    c, e = 7, 5
    q, k, v = (torch.randn(1, 2, c + e, 16) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    full = sdpa(q, k, v, is_causal=True)
    tail = sdpa(q[:, :, c:], k, v, attn_mask=prefix_causal_mask(torch, e, c))
    torch.testing.assert_close(tail, full[:, :, c:])
    # the bias the profiler passes (torch's lower-right causal bias where it exists) means the same
    torch.testing.assert_close(sdpa(q[:, :, c:], k, v, attn_mask=_prefix_bias(torch, e, c, "cpu")), full[:, :, c:])


def test_profile_command_writes_rows_that_calibrate_reads(torch: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    steps, prof = tmp_path / "steps.csv", tmp_path / "profile.toml"
    monkeypatch.setattr(sys, "argv", [
        "schedctl", "profile", "--out", str(steps), *TINY_ARGS, "--prefill-tokens", "16,128",
        "--prefill-context-tokens", "0,64", "--decode-seqs", "1,8", "--decode-context-tokens", "32,128",
        "--mixed", "64:4:32", "--warmup", "1", "--repetitions", "2", "--threads", "1", "--device", "cpu"])
    assert fail_cleanly(app) == 0
    text = steps.read_text()
    assert "# device: cpu" in text and "num_layers=2, hidden_size=128" in text and "head_dim=32" in text
    rows = read_steps_csv(steps)
    assert len(rows) == 9 and all(r.seconds > 0 for r in rows)
    monkeypatch.setattr(sys, "argv", ["schedctl", "calibrate", "--from", str(steps), "--out", str(prof)])
    assert fail_cleanly(app) == 0
    assert prof.exists()
