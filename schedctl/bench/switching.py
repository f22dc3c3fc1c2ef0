"""The hindsight switching oracle of `schedctl bench adaptive`: the best static policy of each phase, phases known.

A reference no online controller can beat by much: it knows where the scenario's phases begin and, in hindsight,
which static policy served each phase best. Per scenario and seed:

1. every static policy has run the whole scenario (the static rows of the bench); each run's P99 TTFT of the
   requests *arriving* in each phase is in ``RunResult.phase_ttft_p99_s``;
2. each phase's policy is the static policy with the lowest P99 there (ties: the earlier in the arm list);
3. the oracle runs the scenario once more through the same loop, pinned to phase 1's policy and re-pinned at
   each phase boundary (the tick whose window ends at the boundary pushes it, as the controller would), so the
   queue and cache one phase leaves behind carry into the next, as they would in production.

When one policy wins every phase (every single-phase scenario) the oracle *is* that static run and is not run
again. Phase by phase is greedy: a policy that wins phase 1 may leave a queue or cache that costs phase 2 more than
it won (seen on ``prefix-shift``), so the oracle is the better (lower P99 TTFT) of the per-phase schedule and the
best static policy of the seed — a constant schedule is a switching schedule too. Per seed, so with several seeds
the oracle is at least as good as the best single static policy on average (it may pick a different policy per
seed), and its mean is compared with the adaptive controller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from schedctl.bench.adaptive import SWITCHING, RunJob, RunResult, run_jobs


def phase_schedule(statics: Sequence[str], runs: dict[str, RunResult], phases: int) -> tuple[str, ...]:
    """The static policy with the lowest P99 TTFT in each phase (NaN, a phase without requests: the first)."""
    out = []
    for i in range(phases):
        def p99(policy: str, i: int = i) -> float:
            v = runs[policy].phase_ttft_p99_s[i]
            return -math.inf if math.isnan(v) else v

        out.append(min((p for p in statics if p in runs), key=p99))
    return tuple(out)


def oracle_jobs(jobs: Sequence[RunJob], results: Sequence[RunResult], statics: Sequence[str]
                ) -> tuple[list[RunJob], list[RunResult]]:
    """What the oracle needs after the static runs: jobs still to run (schedules that switch) and results already
    known (one policy won every phase: that static run, renamed). One per scenario and seed."""
    by: dict[tuple[str, int], dict[str, RunResult]] = {}
    template: dict[tuple[str, int], RunJob] = {}
    for job, res in zip(jobs, results, strict=True):
        if job.policy in statics:
            by.setdefault((job.scenario.name, job.seed), {})[job.policy] = res
            template.setdefault((job.scenario.name, job.seed), job)
    to_run: list[RunJob] = []
    known: list[RunResult] = []
    for key, runs in by.items():
        base = template[key]
        schedule = phase_schedule(statics, runs, len(base.scenario.phases))
        if len(set(schedule)) == 1:
            known.append(runs[schedule[0]].model_copy(update={"policy": SWITCHING, "schedule": list(schedule)}))
        else:
            to_run.append(base.model_copy(update={"policy": SWITCHING, "schedule": schedule,
                                                  "keep_timeline": False}))
    return to_run, known


def run_with_oracle(jobs: Sequence[RunJob], statics: Sequence[str], workers: int,
                    on_done: Callable[[], None] | None = None) -> list[RunResult]:
    """Every job, then the switching oracle of each scenario and seed (its runs after the static ones it needs)."""
    results = run_jobs(jobs, workers, on_done)
    to_run, known = oracle_jobs(jobs, results, statics)
    switched = run_jobs(to_run, workers, on_done)
    for res in switched:
        seed_statics = [r for j, r in zip(jobs, results, strict=True)
                        if j.policy in statics and (j.scenario.name, j.seed) == (res.scenario, res.seed)]
        best = min(seed_statics, key=lambda r: r.ttft_p99_s)
        if best.ttft_p99_s < res.ttft_p99_s:
            res = best.model_copy(update={"policy": SWITCHING, "schedule": [best.policy] * len(res.phase_ttft_p99_s)})
        known.append(res)
    return [*results, *known]
