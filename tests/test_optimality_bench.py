"""`schedctl bench optimality`: the adaptive rows come from the controller's own learner; ratios and rewards."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest

from schedctl.bench import optimality as opt
from schedctl.bench.oracle import LateCount, ServerModel, evaluate, policy_order
from schedctl.controller.ktuner import KTuner, KTunerParams
from schedctl.controller.objective import evaluate as reward_of


def small_cell(**kw: Any) -> opt.CellJob:
    return opt.CellJob(**{"family": "tree@10", "cache": "last_prompt", "objective": "max_ttft", "n_queries": 7,
                          "instances": 6, "train": 12, **kw})


def test_the_adaptive_row_is_the_arm_the_controllers_tuner_exploits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_update = KTuner.update

    def update(self: KTuner, arm: Any, reward: float, obs: Any) -> str:
        calls.append("update")
        return real_update(self, arm, reward, obs)

    monkeypatch.setattr(KTuner, "update", update)
    monkeypatch.setattr(KTuner, "best_arm", lambda self, label, prefer=None: 2)
    res = opt.run_cell(small_cell())
    assert res.ratios[opt.ADAPTIVE] == res.ratios["klpm:2"]  # whatever the tuner exploits is what is scored
    assert res.ratios[opt.ADAPTIVE_WHATIF] == res.ratios["klpm:2"]
    assert res.choices[opt.ADAPTIVE] == {"klpm:2": 6}
    arms = len(KTunerParams().arms)
    assert len(calls) == 12 + 12 * arms  # trained: one live reward per window, plus every arm's replay with what-if


def test_ratios_are_at_least_one_and_hindsight_is_the_best_arm_per_instance() -> None:
    res = opt.run_cell(small_cell(objective="max_ttft"))
    arms = ["fcfs", "klpm:2", "klpm:4", "klpm:8", "lpm"]
    for i, best in enumerate(res.ratios[opt.HINDSIGHT]):
        assert best == min(res.ratios[a][i] for a in arms)
    for name, ratios in res.ratios.items():
        assert all(r >= 1.0 - 1e-9 for r in ratios), name
    assert len(res.ratios[opt.ADAPTIVE]) == 6 and sum(res.choices[opt.ADAPTIVE].values()) == 6


def test_rewards_are_the_controllers_objective_pointed_at_the_instance_objective() -> None:
    model = ServerModel(cache="last_prompt")
    queries = opt.instances("rasq", 8, 3, model)
    slo_s = opt.instance_slo_s(queries, model)
    n = len(queries)
    late_rewards, max_ttfts, tail_rewards = [], [], []
    for k in (1, 2, 4, "inf"):
        obs = opt.window(queries, k, model, 0.0)
        late = evaluate(queries, policy_order(queries, model, None if k == "inf" else k), model,
                        LateCount(ttft_bound_s=slo_s))
        late_rewards.append(reward_of(obs, opt.reward_params("late_count", slo_s)).reward)
        assert late_rewards[-1] == pytest.approx(1.0 - late / n)
        score = reward_of(obs, opt.reward_params("max_ttft", slo_s))
        assert score.tail_s == pytest.approx(max(obs.ttft.samples_s))
        max_ttfts.append(max(obs.ttft.samples_s))
        tail_rewards.append(score.reward)
    order = sorted(range(4), key=lambda i: max_ttfts[i])
    assert [tail_rewards[i] for i in order] == sorted(tail_rewards, reverse=True)  # lower max TTFT, higher reward
    assert len(set(max_ttfts)) > 1


def test_the_whatif_learner_hears_every_arm_each_window_and_the_plain_one_only_the_played_arm() -> None:
    model = ServerModel(cache="radix")
    queries = opt.instances("tree@1.5", 8, 0, model)
    plain = opt.Learner(KTunerParams(), "max_ttft", model, whatif=False)
    replay = opt.Learner(KTunerParams(), "max_ttft", model, whatif=True)
    played = plain.train(queries)
    replay.train(queries)
    plain_counts = {a: s.count for ctx in plain.tuner.stats.values() for a, s in ctx.items()}
    replay_counts = {a: s.count for ctx in replay.tuner.stats.values() for a, s in ctx.items()}
    assert sum(plain_counts.values()) == 1 and plain.tuner.index(played) is not None
    assert replay_counts == {a: 1 for a in ("fcfs", "klpm:2", "klpm:4", "klpm:8", "lpm")}


def test_summarize_leaves_unbounded_instances_out_of_mean_and_worst() -> None:
    res = opt.CellResult(family="rasq", cache="radix", objective="late_count",
                         ratios={"fcfs": [1.0, 3.0, math.inf], opt.ADAPTIVE: [1.0, 1.2, 1.0]},
                         choices={opt.ADAPTIVE: {"klpm:4": 3}})
    rows = {r.policy: r for r in opt.summarize([res])}
    assert rows["fcfs"].mean_ratio == pytest.approx(2.0) and rows["fcfs"].worst_ratio == 3.0
    assert rows["fcfs"].unbounded == 1 and rows["fcfs"].instances == 3
    assert rows[opt.ADAPTIVE].choices == {"klpm:4": 3}
    assert rows[opt.ADAPTIVE].mean_ratio == pytest.approx(3.2 / 3)
    assert opt.target_cells(list(rows.values())) == [(rows[opt.ADAPTIVE], True)]  # the target is on the mean


def test_cli_prints_json_rows_for_every_policy() -> None:
    proc = subprocess.run([sys.executable, "-m", "schedctl", "bench", "optimality", "--families", "rasq", "--caches",
                           "radix", "--objectives", "max_ttft", "--instances", "2", "--train", "4", "--queries", "8",
                           "--jobs", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    policies = {r["policy"] for r in rows}
    assert {"fcfs", "lpm", "klpm:2", "klpm:3", "klpm:4", opt.ADAPTIVE, opt.ADAPTIVE_WHATIF, opt.HINDSIGHT} <= policies
    assert all(r["instances"] == 2 and r["family"] == "rasq" and r["mean_ratio"] >= 1.0 - 1e-9 for r in rows)
    bad = subprocess.run([sys.executable, "-m", "schedctl", "bench", "optimality", "--families", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--families" in bad.stderr
