"""The launch form of the step-time model: the launch roof, the per-context-token cost, fitting them back,
choosing the form from held-back rows, and carrying a profile to another GPU through the datasheet ratios."""

from __future__ import annotations

import numpy as np
import pytest

from schedctl.policies.spec import FCFSSpec, PolicySpec, SarathiSpec
from schedctl.sim.calibrate import StepRow, evaluate_holdout, fit_rows, neutral_profile
from schedctl.sim.engine import EngineConfig, SimEngine
from schedctl.sim.fit import choose_form, fit_step_profile
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.step_time import StepBatch, StepTimeModel, StepTimeProfile, transfer_profile
from schedctl.workloads.types import Request

H100, H200 = load_gpu("h100-sxm"), load_gpu("h200")
L8B, M7B = load_model("llama-3.1-8b"), load_model("mistral-7b")
ROOF = StepTimeProfile.from_datasheet(H100, L8B)
# a GPU whose eager prefills are bound by launching kernels: 9 ms for any prefill, +5 ms with cached context
TRUTH = ROOF.model_copy(update={"prefill_launch_s": 9e-3, "prefill_ctx_launch_s": 5e-3,
                                "s_per_prefill_ctx_token": 4e-7})


# (prefill tokens, cached context, decode seqs, decode context of all seqs): prefills with and without context,
# decode batches, mixed steps
COUNTS = [(e, c, 0, 0) for e in (64, 128, 512, 2048, 8192) for c in (0, 1024, 16384)]
COUNTS += [(0, 0, b, b * c) for b in (1, 8, 64, 256) for c in (256, 4096)]
COUNTS += [(e, 0, b, b * 1024) for e in (256, 2048) for b in (16, 64)]


def grid() -> list[StepBatch]:
    return [StepBatch.from_counts(*c) for c in COUNTS]


def times(profile: StepTimeProfile, batches: list[StepBatch], noise: float = 0.0) -> list[float]:
    rng = np.random.default_rng(0)
    return [StepTimeModel(profile).step_s(b) * (1 + noise * rng.standard_normal()) for b in batches]


def test_small_prefills_hit_the_launch_roof_and_decodes_do_not() -> None:
    model = StepTimeModel(TRUTH)
    small, small_ctx = StepBatch.from_counts(128, 0, 0, 0), StepBatch.from_counts(128, 1024, 0, 0)
    assert model.step_s(small) == pytest.approx(TRUTH.overhead_s + 9e-3)
    assert model.step_s(small_ctx) == pytest.approx(TRUTH.overhead_s + 14e-3)
    decode = StepBatch.from_counts(0, 0, 8, 8 * 1024)
    assert model.step_s(decode) == StepTimeModel(ROOF).step_s(decode)  # decodes replay graphs: no launch roof
    big = StepBatch.from_counts(8192, 0, 0, 0)
    assert model.step_s(big) == StepTimeModel(ROOF).step_s(big)  # a long prefill is compute-bound anyway
    # a decode run in bulk is the sum of its single steps under the launch form too
    run = model.decode_run(8, 8 * 1024)
    singles = [model.step_s(StepBatch(8, 8, 8 * 1024 + 8 * (j + 1), 8 * 1024 + 8 * (j + 1))) for j in range(50)]
    assert run.total_s(50) == pytest.approx(sum(singles))


def test_zero_launch_coefficients_are_exactly_the_roofline() -> None:
    for b in grid():
        compute, memory = StepTimeModel(ROOF).terms(b)
        assert StepTimeModel(ROOF).step_s(b) == ROOF.overhead_s + max(compute, memory)


@pytest.mark.parametrize("policy", [FCFSSpec(), SarathiSpec()], ids=["sglang-like", "hybrid"])
def test_the_engine_pays_the_launch_roof_and_the_context_cost_of_a_prefill(policy: PolicySpec) -> None:
    """A short prompt: launch-bound; the same prompt again after its first 600 tokens are cached: the launch roof
    with context, or the per-context-token cost where that is larger."""
    heavy_ctx = TRUTH.model_copy(update={"s_per_prefill_ctx_token": 1e-4})  # 600 cached tokens: 60 ms
    for profile, second_s in ((TRUTH, 14e-3), (heavy_ctx, None)):
        eng = SimEngine(EngineConfig(), StepTimeModel(profile), 100_000, policy)
        prompt = tuple(range(700))
        eng.add_requests([Request(request_id=0, arrival_s=0.0, prompt=prompt[:100], output_len=1),
                          Request(request_id=1, arrival_s=5.0, prompt=prompt[:600], output_len=1),
                          Request(request_id=2, arrival_s=10.0, prompt=prompt, output_len=1)])
        eng.run()
        assert eng.completed.row(0).ttft_s == pytest.approx(profile.overhead_s + 9e-3)
        third = StepTimeModel(profile).step_s(StepBatch.of([(100, 600)]))
        assert eng.completed.row(2).ttft_s == pytest.approx(third)
        if second_s is not None:
            assert third == pytest.approx(profile.overhead_s + second_s)
        else:
            assert third > profile.overhead_s + 600 * 1e-4


def test_launch_form_recovers_known_coefficients_and_the_roofline_cannot() -> None:
    batches = grid()
    y = times(TRUTH, batches)
    profile, report = fit_step_profile(batches, y, neutral_profile(), "exact", form="launch")
    assert report.worst_ape < 1e-6 and report.launch_bound_rows > 0
    for name in ("prefill_launch_s", "prefill_ctx_launch_s", "s_per_new_token", "s_per_kv_token"):
        assert getattr(profile, name) == pytest.approx(getattr(TRUTH, name), rel=1e-4), name
    _, old = fit_step_profile(batches, y, neutral_profile(), "old", form="roofline")
    assert old.worst_ape > 0.2  # one overhead plus a roofline cannot express a launch-bound small prefill
    noisy = times(TRUTH, batches, noise=0.03)
    profile, report = fit_step_profile(batches, noisy, neutral_profile(), "noisy", form="launch")
    assert report.mape < 0.04
    small = StepBatch.from_counts(128, 0, 0, 0)  # the floor of a small prefill comes back (overhead + launch)
    assert StepTimeModel(profile).step_s(small) == pytest.approx(StepTimeModel(TRUTH).step_s(small), rel=0.05)


def test_choose_form_picks_the_form_that_predicts_held_back_rows() -> None:
    batches = grid()
    form, mape = choose_form(batches, times(TRUTH, batches, noise=0.02), neutral_profile())
    assert form == "launch" and mape["launch"] < mape["roofline"] / 2
    form, mape = choose_form(batches, times(ROOF, batches), neutral_profile())
    assert form == "roofline"  # both fit roofline data exactly: the simpler form wins the tie


def rows_of(profile: StepTimeProfile, batches_counts: list[tuple[int, int, int, int]]) -> list[StepRow]:
    out = []
    for e, c, b, ctx in batches_counts:
        r = StepRow(prefill_tokens=e, prefill_context_tokens=c, decode_seqs=b, decode_context_tokens=ctx, seconds=1)
        out.append(r.model_copy(update={"seconds": StepTimeModel(profile).step_s(r.batch())}))
    return out


@pytest.mark.parametrize("form", ["roofline", "launch", "auto"])
def test_held_back_rows_are_not_used_to_fit(form: str) -> None:
    """Held-back rows made 50% slower than the truth: a fit that never saw them predicts the truth for them."""
    rows = rows_of(TRUTH, COUNTS)
    held, _ = evaluate_holdout(rows, 0.25, seed=0, source="t", initial=None, form=form)
    slow = [r.model_copy(update={"seconds": r.seconds * 1.5}) for r in rows]
    held_ids = {(r.prefill_tokens, r.prefill_context_tokens, r.decode_seqs, r.decode_context_tokens) for r in held.rows}
    mixed = [s if (s.prefill_tokens, s.prefill_context_tokens, s.decode_seqs, s.decode_context_tokens) in held_ids
             else r for r, s in zip(rows, slow, strict=True)]
    held_slow, _ = evaluate_holdout(mixed, 0.25, seed=0, source="t", initial=None, form=form)
    np.testing.assert_allclose(held_slow.predicted_s, held.predicted_s, rtol=1e-9)
    # ...and the error is scored against the (slowed) measured times of those rows
    np.testing.assert_allclose([r.seconds for r in held_slow.rows], [1.5 * r.seconds for r in held.rows])
    pred, measured = np.array(held_slow.predicted_s), np.array([r.seconds for r in held_slow.rows])
    np.testing.assert_allclose(held_slow.ape, np.abs(pred - measured) / measured)


def test_transfer_through_datasheet_ratios() -> None:
    # the datasheet profile of one GPU/model carried to another is the other's datasheet profile
    for gpu in (H200, load_gpu("l40s")):  # same peak FLOP/s as the H100, and not
        moved = transfer_profile(ROOF, H100, L8B, gpu, M7B)
        target = StepTimeProfile.from_datasheet(gpu.model_copy(update={"compute_efficiency": H100.compute_efficiency,
                                                                       "memory_efficiency": H100.memory_efficiency,
                                                                       "step_overhead_s": gpu.step_overhead_s}), M7B)
        for name in ("overhead_s", "s_per_new_token", "s_per_seq", "s_per_attn_ctx_token", "memory_base_s",
                     "s_per_kv_token"):
            assert getattr(moved, name) == pytest.approx(getattr(target, name), rel=1e-9), (gpu.name, name)
    # launch costs are per layer: same host, same layer count, same launch roof; a round trip is the identity
    assert transfer_profile(TRUTH, H100, L8B, H200, M7B).prefill_launch_s == TRUTH.prefill_launch_s
    back = transfer_profile(transfer_profile(TRUTH, H100, L8B, H200, M7B), H200, M7B, H100, L8B)
    for name in StepTimeProfile.model_fields:
        if name != "source":
            assert getattr(back, name) == pytest.approx(getattr(TRUTH, name), rel=1e-9), name


def test_fit_rows_auto_reports_the_chosen_form() -> None:
    _, report = fit_rows(rows_of(TRUTH, COUNTS), "t")
    assert report.form == "launch"
    _, report = fit_rows(rows_of(ROOF, COUNTS), "t")
    assert report.form == "roofline"


def test_the_datasheet_prior_puts_the_weight_read_where_the_datasheet_says() -> None:
    """On the shipped H100 8B steps, decodes cannot tell a fixed overhead from the weight read; the prior decides,
    and the fit stays close to the rows."""
    from pathlib import Path

    from schedctl.sim.calibrate import read_rows

    rows, _ = read_rows(Path(__file__).parents[1] / "config/profiles/h100-sxm-llama-3.1-8b/steps.csv")
    free, free_report = fit_rows(rows, "t", ROOF, form="launch")
    tied, tied_report = fit_rows(rows, "t", ROOF, form="launch", prior_weight=1.0)
    assert tied.memory_base_s == pytest.approx(ROOF.memory_base_s, rel=0.1)
    assert abs(free.memory_base_s / ROOF.memory_base_s - 1) > 0.3  # without it, the split lands elsewhere
    assert tied_report.mape < free_report.mape + 0.02


def test_a_batched_step_cost_is_paid_from_two_tokens_and_fitted_back() -> None:
    """A CPU's matrix-vector path: one decode sequence skips the batched path's fixed cost, two pay it."""
    truth = ROOF.model_copy(update={"batched_step_s": 4e-3})
    model = StepTimeModel(truth)
    one, two = StepBatch.from_counts(0, 0, 1, 512), StepBatch.from_counts(0, 0, 2, 1024)
    assert model.step_s(one) == StepTimeModel(ROOF).step_s(one)
    assert model.step_s(two) == pytest.approx(StepTimeModel(ROOF).step_s(two) + 4e-3)
    for batch in (1, 2, 8):  # a decode run in bulk pays it per step exactly when a single step does
        run = model.decode_run(batch, batch * 512)
        singles = [model.step_s(StepBatch(batch, batch, batch * 512 + batch * (j + 1), batch * 512 + batch * (j + 1)))
                   for j in range(20)]
        assert run.total_s(20) == pytest.approx(sum(singles))
    batches = grid()
    profile, report = fit_step_profile(batches, times(truth, batches), ROOF, "t", form="launch")
    assert profile.batched_step_s == pytest.approx(4e-3, rel=0.05)
    assert report.worst_ape < 0.01
    roof_only, _ = fit_step_profile(batches, times(truth, batches), ROOF, "t", form="roofline")
    assert roof_only.batched_step_s == 0.0  # not part of the roofline form
