"""schedctl's plugin for SGLang: the queue orders of ``KLPMSpec`` (k-LPM, hrrn, spf, lpm-aging, SGLang's own
``sglang:`` orders) and SLAI's prefill order for the waiting queue, switchable at run time.

Loaded by SGLang's own plugin mechanism (entry point group ``sglang.srt.plugins``, name ``schedctl``; enable it
with ``SGLANG_PLUGINS=schedctl``) in every process that calls ``load_plugins()``, scheduler ranks included.
:func:`register` adds four hooks through SGLang's ``HookRegistry``:

* AROUND ``SchedulePolicy.calc_priority`` — one scheduling pass. Counts the requests admitted since the previous
  pass (they left the waiting queue) into the k-LPM pick counter, gives new requests an arrival rank, then lets
  SGLang run its own pass: prefix matching against its radix cache and in-batch deprioritisation stay SGLang's.
* AROUND ``SchedulePolicy._sort_by_longest_prefix`` — where SGLang's LPM would sort, the list is ordered by
  ``order_waiting`` (``policies/waiting.py``, the shared implementation) from SGLang's own match lengths (hrrn
  also from SGLang's ``processed_tokens`` and ``arrival_processed_tokens``); SGLang's temporarily
  deprioritised requests (one per cold shared prefix per pass) follow in age order. Admission, chunking and
  memory checks run afterwards on this list, unchanged.
* AFTER ``SchedulerInternalStateController._update_handlers`` — our keys in SGLang's ``/set_internal_state``
  table (encoding in ``channel.py``; ``schedctl_schedule_conservativeness``, the admission reserve, in
  ``reserve.py``); every rank receives the request.
* AFTER ``SchedulerInternalStateController.get_internal_state`` — our state in ``/server_info``.
* BEFORE ``Scheduler.handle_generate_request``, only when ``SCHEDCTL_RECORD_TRACE`` is set — the requests the
  server receives, written as a Mooncake-format trace of block hashes (``recorder.py``; off by default).

Above 128 waiting requests SGLang skips prefix matching (``WAITING_QUEUE_PREFIX_MATCH_MAX``: LPM becomes "keep
the list as it is"). The plugin keeps k-LPM there at bounded cost: each pass re-matches at most
``LONG_QUEUE_MATCH_BUDGET`` requests with SGLang's own ``match_kv_cache`` (never-matched first, then the least
recently matched), orders the whole queue by k-LPM on the match lengths it has (some a few passes old), and
applies SGLang's in-batch deprioritisation itself to the head of that order (:func:`cold_prefix_duplicates`: of
the requests sharing a prefix the cache lacks, one per pass goes ahead). A stale length only affects the order:
SGLang re-matches every request it admits.

Determinism across tensor-parallel ranks: the order depends only on the queue's contents, SGLang's radix cache
(identical on every rank) and counters advanced per pass and per admission — never on wall clock or
randomness. Ages are ranks in first-seen order (new requests are appended to the queue in the same order on
every rank); the pick counter advances by the number of requests that left the queue between passes (an abort
counts too: rare, and the same on every rank). A policy change restarts the pick counter.

Safety: any exception in our code leaves SGLang's own order in force for that pass (logged once per place and
exception type, counted in ``/server_info``); the plugin never raises into SGLang. The live tests check this on a
real server with a test-only switch: a server started with ``SCHEDCTL_PLUGIN_TEST_FAULTS=1`` also accepts the key
``schedctl_test_fault`` (1: the next orderings raise, 0: they work again). Without that variable the key does not
exist, so no production server can be made to fail this way. On an SGLang version other
than ``SUPPORTED_SGLANG_VERSIONS`` it registers nothing and warns (``SCHEDCTL_SGLANG_ALLOW_UNTESTED=1``
overrides). This module imports SGLang only inside functions, so it imports (and type-checks) without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from schedctl.engine_adapter.sglang import channel, recorder, reserve
from schedctl.engine_adapter.sglang.plugin_state import KEY_TEST_FAULT as KEY_TEST_FAULT
from schedctl.engine_adapter.sglang.plugin_state import TEST_FAULTS_ENV as TEST_FAULTS_ENV
from schedctl.engine_adapter.sglang.plugin_state import PluginState as PluginState
from schedctl.engine_adapter.sglang.plugin_state import arrival_rank
from schedctl.engine_adapter.sglang.plugin_state import slo_class_of as slo_class_of
from schedctl.policies.inbatch import held_back
from schedctl.policies.orders import sglang_sorts
from schedctl.policies.spec import KLPMSpec

logger = logging.getLogger("schedctl.sglang.plugin")

SUPPORTED_SGLANG_VERSIONS = frozenset({"0.5.23"})
ALLOW_UNTESTED_ENV = "SCHEDCTL_SGLANG_ALLOW_UNTESTED"
LONG_QUEUE_MATCH_BUDGET = 128  # prefix matches per pass when SGLang itself skips matching (> 128 waiting)

_POLICY = "sglang.srt.managers.schedule_policy.SchedulePolicy"
_STATE_CTL = "sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController"
TARGET_CALC_PRIORITY = f"{_POLICY}.calc_priority"
TARGET_SORT_LPM = f"{_POLICY}._sort_by_longest_prefix"
TARGET_UPDATE_HANDLERS = f"{_STATE_CTL}._update_handlers"
TARGET_GET_STATE = f"{_STATE_CTL}.get_internal_state"

_MATCHED_AT = "_schedctl_matched_pass"  # set on SGLang's Req: the pass that last matched its prefix


STATE = PluginState()
_registered = False


# -- hooks ------------------------------------------------------------------------------------------------------
def _calc_priority_hook(original: Callable[..., Any], policy: Any, waiting_queue: list[Any], *a: Any, **kw: Any) -> Any:
    if not STATE.active or STATE.in_pass:
        return original(policy, waiting_queue, *a, **kw)
    try:
        STATE.begin_pass(waiting_queue)
        # scheduler.py passes its processed_tokens_counter (HRRN's clock) as calc_priority's third argument
        STATE.processed_tokens = int(kw.get("processed_tokens", a[1] if len(a) > 1 else 0) or 0)
        # SGLang's --schedule-low-priority-values-first: which way a request's priority points
        STATE.low_values_first = bool(getattr(policy, "schedule_low_priority_values_first", False))
    except Exception as exc:
        STATE.fail("begin_pass", exc)
        return original(policy, waiting_queue, *a, **kw)
    STATE.in_pass, STATE.pass_mode = True, "pending"
    try:
        result = original(policy, waiting_queue, *a, **kw)
    finally:
        STATE.in_pass = False
    if STATE.pass_mode == "pending":  # SGLang did not sort by prefix this pass (long queue, or base policy)
        try:
            _order_long_queue(policy, waiting_queue)
        except Exception as exc:
            STATE.fail("long_queue_order", exc)
    try:
        STATE.end_pass(waiting_queue)
    except Exception as exc:
        STATE.fail("end_pass", exc)
    STATE.pass_mode = "idle"
    return result


def _sort_by_longest_prefix_hook(
    original: Callable[..., Any], waiting_queue: list[Any], temporary_deprioritized: set[str], *a: Any, **kw: Any
) -> Any:
    if not (STATE.in_pass and STATE.pass_mode == "pending"):
        return original(waiting_queue, temporary_deprioritized, *a, **kw)
    try:
        ordered = STATE.order(waiting_queue, temporary_deprioritized)
        if len(ordered) != len(waiting_queue) or {id(r) for r in ordered} != {id(r) for r in waiting_queue}:
            raise RuntimeError("the k-LPM order is not a permutation of the waiting queue")
        for req in waiting_queue:
            setattr(req, _MATCHED_AT, STATE.passes)  # SGLang matched all of them this pass
    except Exception as exc:
        STATE.fail("order", exc)
        STATE.pass_mode = "fallback"
        return original(waiting_queue, temporary_deprioritized, *a, **kw)
    waiting_queue[:] = ordered
    STATE.pass_mode = "ordered"
    return None


def _order_long_queue(policy: Any, waiting_queue: list[Any]) -> None:
    """The pushed order when SGLang skipped prefix matching: re-match a bounded number of requests, then order all.

    ``sglang:`` orders keep SGLang's own rule instead: lpm and hrrn leave the list as it is above 128 waiting,
    fcfs always (``orders.sglang_sorts``); sglang:spf, which SGLang sorts at any length, is ordered here."""
    spec = STATE.spec
    if isinstance(spec, KLPMSpec) and spec.sglang and not sglang_sorts(
            None if spec.k == 1 else spec.rank, len(waiting_queue)):
        return
    if STATE.matches_prefixes():
        from sglang.srt.mem_cache.common import match_kv_cache

        stalest = sorted(waiting_queue, key=lambda r: (getattr(r, _MATCHED_AT, -1), arrival_rank(r)))
        for req in stalest[:LONG_QUEUE_MATCH_BUDGET]:
            match_kv_cache(req, policy.tree_cache)
            setattr(req, _MATCHED_AT, STATE.passes)
        STATE.long_queue_passes += 1
    ordered = STATE.order(waiting_queue, frozenset())
    if STATE.matches_prefixes():
        deprioritized = cold_prefix_duplicates(ordered[:LONG_QUEUE_MATCH_BUDGET])
        if deprioritized:
            ordered = STATE.order(waiting_queue, deprioritized)
    waiting_queue[:] = ordered


def cold_prefix_duplicates(reqs: Sequence[Any]) -> set[str]:
    """The requests SGLang's in-batch deprioritisation holds back this pass (``policies/inbatch.py``), over
    ``reqs`` in order, with SGLang's own thresholds (env-configurable, read from its module)."""
    from sglang.srt.managers.schedule_policy import (
        IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD as CHECK_TOKENS,
    )
    from sglang.srt.managers.schedule_policy import (
        IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD as SHARED_TOKENS,
    )

    entries = ((int(r.prefix_len), [*r.origin_input_ids[:SHARED_TOKENS], *r.output_ids[:SHARED_TOKENS]],
                (getattr(r, "extra_key", None), getattr(r, "cache_salt", None))) for r in reqs)
    held = held_back(entries, CHECK_TOKENS, SHARED_TOKENS)
    return {r.rid for r, h in zip(reqs, held, strict=True) if h}


class _ChannelHandler:
    """One entry of SGLang's update-handler table (SGLang calls ``validate`` for every key, then ``apply``)."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def validate(self, key: str, value: Any) -> None:
        from sglang.srt.managers.scheduler_components.internal_state import UpdateRejected

        try:
            STATE.check(key, value, _base_policy(self.controller))
        except Exception as exc:
            raise UpdateRejected(f"schedctl: {exc}") from None

    def apply(self, key: str, value: Any) -> None:
        try:
            STATE.set_field(key, value)
        except Exception as exc:
            STATE.fail("apply", exc)
        return None  # not a server arg: nothing for SGLang's config override


class _ReserveHandler:
    """``schedctl_schedule_conservativeness`` in SGLang's update-handler table (``reserve.py``)."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller

    def validate(self, key: str, value: Any) -> None:
        from sglang.srt.managers.scheduler_components.internal_state import UpdateRejected

        try:
            reserve.check_conservativeness(value)
        except ValueError as exc:
            raise UpdateRejected(f"schedctl: {exc}") from None

    def apply(self, key: str, value: Any) -> None:
        try:
            reserve.apply_conservativeness(self.controller.scheduler, reserve.check_conservativeness(value))
            logger.info("schedctl: schedule_conservativeness %s", value)
        except Exception as exc:
            STATE.fail("reserve", exc)
        return None  # applied through SGLang's config override in reserve.py already


def _base_policy(controller: Any) -> str | None:
    try:
        return str(controller.scheduler.policy.policy.value)
    except Exception:
        return None


def _update_handlers_hook(result: Any, controller: Any, *a: Any, **kw: Any) -> Any:
    try:
        keys = [*channel.KEYS, *([KEY_TEST_FAULT] if os.environ.get(TEST_FAULTS_ENV) == "1" else [])]
        for key in keys:
            result[key] = _ChannelHandler(controller)
        result[reserve.KEY_CONSERVATIVENESS] = _ReserveHandler(controller)
    except Exception as exc:
        STATE.fail("update_handlers", exc)
    return result


def _get_internal_state_hook(result: Any, controller: Any, *a: Any, **kw: Any) -> Any:
    try:
        result.internal_state[channel.SERVER_INFO_KEY] = STATE.snapshot()
    except Exception as exc:
        STATE.fail("server_info", exc)
        return result
    try:
        result.internal_state[channel.SERVER_INFO_KEY]["reserve"] = reserve.reserve_readback(controller.scheduler)
    except Exception as exc:
        STATE.fail("reserve_readback", exc)
    return result


def sglang_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def register() -> None:
    """Entry point of ``sglang.srt.plugins``: register our hooks (SGLang applies them after all plugins ran)."""
    global _registered
    if _registered:
        return
    found = sglang_version()
    if found not in SUPPORTED_SGLANG_VERSIONS and os.environ.get(ALLOW_UNTESTED_ENV) != "1":
        logger.warning(
            "schedctl plugin disabled: SGLang %s is not a supported version (%s); set %s=1 to load it anyway",
            found,
            ", ".join(sorted(SUPPORTED_SGLANG_VERSIONS)),
            ALLOW_UNTESTED_ENV,
        )
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET_CALC_PRIORITY, _calc_priority_hook, HookType.AROUND)
    HookRegistry.register(TARGET_SORT_LPM, _sort_by_longest_prefix_hook, HookType.AROUND)
    HookRegistry.register(TARGET_UPDATE_HANDLERS, _update_handlers_hook, HookType.AFTER)
    HookRegistry.register(TARGET_GET_STATE, _get_internal_state_hook, HookType.AFTER)
    recorder.register(HookRegistry, HookType.BEFORE)  # only when SCHEDCTL_RECORD_TRACE is set (recorder.py)
    _registered = True
    logger.info("schedctl plugin registered for SGLang %s (pid %d)", found, os.getpid())
