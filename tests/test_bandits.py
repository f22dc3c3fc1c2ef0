"""Discrete learners on stationary seeded environments, and the protocol every learner keeps.

Stated bounds (mean over 4 seeds, horizon T = 2000, 5 arms, rewards in [0, 1]):
- the theory: UCB1 and Thompson sampling below UCB1's bound ``sum 8 ln T / gap + (1 + pi^2/3) sum gap``
  (Auer et al. 2002; 928 here), EXP3 below ``2 sqrt(e - 1) sqrt(T K ln K)`` with its horizon-tuned gamma
  (333 here). Uniform random play scores 520, so the UCB1 bound alone would not catch a broken learner:
- in practice: UCB1 and Thompson below 30% of uniform play's regret (156), EXP3 below 50% (260);
- sub-linear growth: R(T) / R(T/4) <= 3 (linear regret gives 4; log regret ~1.2, sqrt regret 2);
- the best arm is played in >= 80% (UCB1, Thompson) or >= 50% (EXP3) of the last quarter.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from schedctl.bandits import (
    UCB1,
    Bandit,
    BanditConfigError,
    ContextualBandit,
    DiscreteBandit,
    bandit_from_state,
    decode_arm,
    encode_arm,
    exp3_gamma_for_horizon,
    make_bandit,
    names,
    params_model,
)
from schedctl.bandits.synthetic import simulate, stationary

K_ARMS = [1, 2, 4, 8, "inf"]
MEANS = [0.3, 0.45, 0.7, 0.55, 0.2]
HORIZON = 2000
SEEDS = range(4)
CONTEXTS = {
    "linucb": [0.3, 0.8],
    "contextual": {"arrival_rate_rps": 5.0, "queue_len": 3, "prefix_share": 0.6},
}
EXTRA_PARAMS = {"linucb": {"n_features": 2}}


def ucb1_bound(means: list[float], horizon: int) -> float:
    best = max(means)
    gaps = [best - m for m in means if m < best]
    return sum(8 * math.log(horizon) / g for g in gaps) + (1 + math.pi**2 / 3) * sum(gaps)


def uniform_regret(means: list[float], horizon: int) -> float:
    return horizon * (max(means) - float(np.mean(means)))


def exp3_bound(n_arms: int, horizon: int) -> float:
    return 2 * math.sqrt(math.e - 1) * math.sqrt(horizon * n_arms * math.log(n_arms))


def build(name: str, arms: list, seed: int, **params) -> Bandit:
    return make_bandit(name, arms, seed, **{**EXTRA_PARAMS.get(name, {}), **params})


def mean_regret(name: str, env, **params) -> tuple[float, float, float]:
    """(R(T), R(T/4), share of the best arm in the last quarter), means over seeds."""
    best = env.best_arm(0)
    runs = [simulate(build(name, list(env.arms), s, **params), env, HORIZON, 1000 + s) for s in SEEDS]
    return (
        float(np.mean([r.regret[-1] for r in runs])),
        float(np.mean([r.regret[HORIZON // 4 - 1] for r in runs])),
        float(np.mean([r.share(best, 3 * HORIZON // 4, HORIZON) for r in runs])),
    )


@pytest.mark.parametrize(
    ("name", "params", "noise"),
    [
        ("ucb1", {}, "bernoulli"),
        ("thompson_beta", {}, "bernoulli"),
        ("ucb1", {}, "gaussian"),
        ("thompson_gaussian", {"noise_std": 0.25}, "gaussian"),
    ],
)
def test_stationary_regret_sublinear_and_below_ucb1_bound(name: str, params: dict, noise: str) -> None:
    env = stationary(MEANS, K_ARMS, noise=noise)  # type: ignore[arg-type]
    env = dataclasses.replace(env, noise_std=0.25)  # Gaussian noise of sd 0.25 is 1/2-sub-Gaussian like [0,1]
    r_full, r_quarter, best_share = mean_regret(name, env, **params)
    assert r_full <= ucb1_bound(MEANS, HORIZON)
    assert r_full <= 0.3 * uniform_regret(MEANS, HORIZON)
    assert r_full / r_quarter <= 3.0
    assert best_share >= 0.8


def test_exp3_regret_sublinear_and_below_its_bound() -> None:
    env = stationary(MEANS, K_ARMS)
    r_full, r_quarter, best_share = mean_regret("exp3", env, gamma=exp3_gamma_for_horizon(len(MEANS), HORIZON))
    assert r_full <= exp3_bound(len(MEANS), HORIZON)
    assert r_full <= 0.5 * uniform_regret(MEANS, HORIZON)
    assert r_full / r_quarter <= 3.0
    assert best_share >= 0.5


@pytest.mark.parametrize("name", names())
def test_same_seed_same_choices(name: str) -> None:
    env = stationary(MEANS, K_ARMS)
    ctx = CONTEXTS.get(name)
    a = simulate(build(name, K_ARMS, 11), env, 300, 5, (lambda t: ctx) if ctx else None)
    b = simulate(build(name, K_ARMS, 11), env, 300, 5, (lambda t: ctx) if ctx else None)
    assert a.choices == b.choices


@pytest.mark.parametrize("name", ["thompson_beta", "thompson_gaussian", "exp3", "discounted_thompson_beta"])
def test_different_seeds_differ_for_randomised_learners(name: str) -> None:
    env = stationary([0.5] * 5, K_ARMS)  # all equal: choices are driven by the learner's own draws
    choices = {tuple(simulate(build(name, K_ARMS, seed), env, 200, 5).choices) for seed in range(3)}
    assert len(choices) == 3


@pytest.mark.parametrize("name", names())
def test_state_round_trips_through_json_and_continues_identically(name: str) -> None:
    arms = [1, 2, 4, 8, "inf", "8", 2.5, (1, "x"), None, False]  # 8 and "8" must stay apart
    env = stationary(np.linspace(0.2, 0.8, len(arms)), arms)
    ctx = CONTEXTS.get(name)
    ctx_fn = (lambda t: ctx) if ctx else None
    learner = build(name, arms, 3)
    simulate(learner, env, 150, 1, ctx_fn)
    saved = json.dumps(learner.state(), allow_nan=False)  # strict JSON: no NaN, no tuples as keys
    restored = bandit_from_state(json.loads(saved))
    assert type(restored) is type(learner)
    assert restored.arms == learner.arms
    assert [type(a) for a in restored.arms] == [type(a) for a in learner.arms]
    ours = simulate(learner, env, 60, 2, ctx_fn).choices
    theirs = simulate(restored, env, 60, 2, ctx_fn).choices
    assert ours == theirs
    assert restored.state() == learner.state()


def test_arm_labels_encode_exactly() -> None:
    for arm in [1, "1", 1.0, True, None, "inf", math.inf, (8, "inf"), -3]:
        back = decode_arm(json.loads(json.dumps(encode_arm(arm))))
        assert back == arm and type(back) is type(arm)
    with pytest.raises(TypeError, match="arm labels"):
        make_bandit("ucb1", [object()], 0)


@pytest.mark.parametrize("name", [n for n in names() if n not in ("linucb", "contextual")])
def test_arms_added_and_removed_while_running(name: str) -> None:
    learner = build(name, [1, 2, 4], 0)
    env = stationary([0.2, 0.3, 0.4, 0.9], [1, 2, 4, 8])
    simulate(learner, env, 300, 0)
    learner.add_arm(8)  # a much better arm appears
    run = simulate(learner, env, 1500, 1)
    assert run.share(8, 1000, 1500) >= 0.5
    learner.remove_arm(8)
    assert learner.arms == (1, 2, 4)
    after = simulate(learner, stationary([0.2, 0.3, 0.4, 0.9], [1, 2, 4, 8]), 200, 2)
    assert 8 not in after.choices
    with pytest.raises(ValueError, match="unknown arm"):
        learner.update(8, 1.0)
    with pytest.raises(ValueError, match="already present"):
        learner.add_arm(4)


def test_removing_every_arm_refuses_to_select() -> None:
    learner = make_bandit("ucb1", [1], 0)
    learner.remove_arm(1)
    with pytest.raises(ValueError, match="no arms"):
        learner.select()


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("ucb1", {"exploration": -1.0}, "exploration"),
        ("ucb1", {"explore": 1.0}, "explore"),
        ("sliding_window_ucb", {"window_steps": 0}, "window_steps"),
        ("discounted_ucb", {"discount": 1.0}, "discount"),
        ("thompson_beta", {"prior_alpha": 0.0}, "prior_alpha"),
        ("exp3", {"gamma": 2.0}, "gamma"),
        ("linucb", {}, "n_features"),
        ("contextual", {"learner": "linucb"}, "learner"),
        ("contextual", {"learner_params": {"discount": 5.0}}, "discount"),
        ("contextual", {"bucketer": {"rate_thresholds_rps": [10.0, 5.0]}}, "bucketer.rate_thresholds_rps"),
    ],
)
def test_bad_params_are_refused_naming_the_field(name: str, params: dict, field: str) -> None:
    with pytest.raises(BanditConfigError) as err:
        make_bandit(name, K_ARMS, 0, **params)
    assert err.value.field == field
    assert field in str(err.value)


def test_unknown_learner_lists_the_known_ones() -> None:
    with pytest.raises(BanditConfigError, match=r"unknown learner.*discounted_ucb"):
        make_bandit("ucb2", K_ARMS, 0)
    with pytest.raises(BanditConfigError):
        params_model("nope")


@pytest.mark.parametrize("name", ["thompson_beta", "exp3"])
def test_rewards_outside_unit_interval_refused(name: str) -> None:
    learner = make_bandit(name, K_ARMS, 0)
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        learner.update(1, 1.5)
    with pytest.raises(ValueError, match="finite"):
        make_bandit("ucb1", K_ARMS, 0).update(1, math.nan)


def test_seed_must_be_given() -> None:
    with pytest.raises(TypeError, match="seed"):
        make_bandit("ucb1", K_ARMS, None)  # type: ignore[arg-type]
    learner = make_bandit("thompson_beta", K_ARMS, np.random.default_rng(5))
    assert learner.select() in K_ARMS


def test_every_learner_satisfies_the_protocol() -> None:
    for name in names():
        learner = build(name, K_ARMS, 0)
        assert isinstance(learner, Bandit)
        assert isinstance(learner, DiscreteBandit | ContextualBandit)
    assert isinstance(UCB1(K_ARMS, 0), Bandit)
