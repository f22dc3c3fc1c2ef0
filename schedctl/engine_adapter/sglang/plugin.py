"""schedctl's plugin for SGLang: k-LPM ordering of the waiting queue, switchable at run time.

Loaded by SGLang's own plugin mechanism (entry point group ``sglang.srt.plugins``, name ``schedctl``; enable it
with ``SGLANG_PLUGINS=schedctl``) in every process that calls ``load_plugins()``, scheduler ranks included.
:func:`register` adds four hooks through SGLang's ``HookRegistry``:

* AROUND ``SchedulePolicy.calc_priority`` — one scheduling pass. Counts the requests admitted since the previous
  pass (they left the waiting queue) into the k-LPM pick counter, gives new requests an arrival rank, then lets
  SGLang run its own pass: prefix matching against its radix cache and in-batch deprioritisation stay SGLang's.
* AROUND ``SchedulePolicy._sort_by_longest_prefix`` — where SGLang's LPM would sort, the list is ordered by
  ``klpm_order`` (the shared implementation) from SGLang's own match lengths; SGLang's temporarily
  deprioritised requests (one per cold shared prefix per pass) follow in age order. Admission, chunking and
  memory checks run afterwards on this list, unchanged.
* AFTER ``SchedulerInternalStateController._update_handlers`` — our keys in SGLang's ``/set_internal_state``
  table (encoding in ``channel.py``); every rank receives the request.
* AFTER ``SchedulerInternalStateController.get_internal_state`` — our state in ``/server_info``.

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
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from schedctl.engine_adapter.sglang import channel
from schedctl.policies import slai
from schedctl.policies.inbatch import held_back
from schedctl.policies.klpm import klpm_order
from schedctl.policies.spec import KLPMSpec, PolicySpec, SLAISpec, policy_label

logger = logging.getLogger("schedctl.sglang.plugin")

SUPPORTED_SGLANG_VERSIONS = frozenset({"0.5.23"})
ALLOW_UNTESTED_ENV = "SCHEDCTL_SGLANG_ALLOW_UNTESTED"
TEST_FAULTS_ENV = "SCHEDCTL_PLUGIN_TEST_FAULTS"  # "1": register the test-only key below (live tests only)
KEY_TEST_FAULT = "schedctl_test_fault"  # 1: every ordering raises (an injected fault), 0: normal
LONG_QUEUE_MATCH_BUDGET = 128  # prefix matches per pass when SGLang itself skips matching (> 128 waiting)

_POLICY = "sglang.srt.managers.schedule_policy.SchedulePolicy"
_STATE_CTL = "sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController"
TARGET_CALC_PRIORITY = f"{_POLICY}.calc_priority"
TARGET_SORT_LPM = f"{_POLICY}._sort_by_longest_prefix"
TARGET_UPDATE_HANDLERS = f"{_STATE_CTL}._update_handlers"
TARGET_GET_STATE = f"{_STATE_CTL}.get_internal_state"

_SEQ = "_schedctl_seq"  # set on SGLang's Req: arrival rank in this scheduler
_MATCHED_AT = "_schedctl_matched_pass"  # set on SGLang's Req: the pass that last matched its prefix


def _seq(req: Any) -> int:
    return int(getattr(req, _SEQ))


def slo_class_of(req: Any, low_values_first: bool) -> str:
    """SLAI's TBT class of an SGLang request: "strict" when it was sent with a priority above the default.

    SGLang's ``priority`` request field (None by default) is the one per-request class SGLang carries; a value that
    SGLang itself would schedule ahead of a request without one (above 0, or below 0 when the server runs with
    low priority values first) marks the strict class.
    """
    p = getattr(req, "priority", None)
    if p is None:
        return "default"
    return "strict" if (p < 0 if low_values_first else p > 0) else "default"


class PluginState:
    """Everything the plugin keeps in one scheduler process (one per rank)."""

    def __init__(self) -> None:
        self.kind = channel.KIND_OFF
        self.k = channel.K_INF
        self.policy_version = 0
        self.picks = 0  # k-LPM pick counter: admissions since the policy was set
        self.passes = 0
        self.admitted = 0
        self.long_queue_passes = 0
        self.next_seq = 0
        self.last_rids: set[str] = set()
        self.fallbacks: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self.in_pass = False
        self.pass_mode = "idle"  # within a pass: pending -> ordered | fallback
        self.low_values_first = False  # the server's priority direction, read at each pass
        self.inject_fault = False  # test-only (KEY_TEST_FAULT): order() raises, as a bug in our code would
        self._pending: dict[str, int] = {}  # values validated in the push SGLang is validating
        self._decoded: tuple[int, int, PolicySpec | None] | None = None  # (kind, k, spec): decoded once per push

    @property
    def active(self) -> bool:
        return self.kind != channel.KIND_OFF

    @property
    def spec(self) -> PolicySpec | None:
        """The pushed policy (None: off), decoded from the channel numbers once after each push, not every pass."""
        if self._decoded is None or self._decoded[:2] != (self.kind, self.k):
            self._decoded = (self.kind, self.k, channel.decode_policy(self.kind, self.k))
        return self._decoded[2]

    def queue_k(self) -> int | None:
        """The k-LPM k of the pushed policy (fcfs, lpm, klpm only)."""
        spec = self.spec
        if not isinstance(spec, KLPMSpec):
            raise ValueError(f"{self.label()} does not order the queue by k-LPM")
        return spec.k

    def matches_prefixes(self) -> bool:
        """Whether the pushed policy orders by SGLang's prefix matches (lpm, klpm with k > 1)."""
        spec = self.spec
        return isinstance(spec, KLPMSpec) and spec.k != 1

    def label(self) -> str:
        spec = self.spec
        return "off" if spec is None else policy_label(spec)

    # -- control channel ------------------------------------------------------------------------------------
    def check(self, key: str, value: Any, base_policy: str | None) -> None:
        """Raise ValueError if ``key=value`` cannot be applied on this scheduler.

        SGLang validates every key of a push before it applies any, so kind and k are checked together: each
        check sees the values validated so far in this push (the current ones for keys not in it yet; a kind
        not yet followed by its k is checked with k = inf, valid for every kind).
        """
        if key == KEY_TEST_FAULT:
            channel.as_int(value, key)
            return
        if key not in channel.KEYS:
            raise ValueError(f"not a schedctl key: {key}")
        try:
            self._pending[key] = channel.as_int(value, key)
            kind = self._pending.get(channel.KEY_KIND, self.kind)
            k = self._pending.get(channel.KEY_K, channel.K_INF if key == channel.KEY_KIND else self.k)
            channel.decode_policy(kind, k)  # unknown codes and flags raise here
            needs_match = channel.KIND_CODES[kind] in channel.PREFIX_MATCH_KINDS
            if key == channel.KEY_KIND and needs_match and base_policy != "lpm":
                raise ValueError(
                    f"lpm/klpm need SGLang started with --schedule-policy lpm and the radix cache on "
                    f"(this scheduler runs {base_policy!r})"
                )
        except ValueError:
            self._pending.clear()  # SGLang stops at the first rejection: the next push starts afresh
            raise

    def set_field(self, key: str, value: Any) -> None:
        self._pending.clear()  # every key of this push is validated by now
        n = channel.as_int(value, key)
        if key == KEY_TEST_FAULT:
            self.inject_fault = n != 0
            logger.warning("schedctl plugin: injected ordering fault %s (test switch)", "on" if n else "off")
        elif key == channel.KEY_KIND and n != self.kind:
            self.kind = n
            self._restart_cycle()
        elif key == channel.KEY_K and n != self.k:
            self.k = n
            self._restart_cycle()
        elif key == channel.KEY_VERSION:
            self.policy_version = n
            logger.info("schedctl policy %s (version %d)", self.label(), n)

    def _restart_cycle(self) -> None:
        """A new policy starts its k-LPM cycle afresh: admissions before the change do not count."""
        self.picks = 0
        self.last_rids = set()

    def snapshot(self) -> dict[str, Any]:
        from schedctl import __version__

        return {
            "plugin_version": __version__,
            "policy": self.label(),
            channel.KEY_KIND: self.kind,
            channel.KEY_K: self.k,
            channel.KEY_VERSION: self.policy_version,
            "picks": self.picks,
            "passes": self.passes,
            "admitted": self.admitted,
            "long_queue_passes": self.long_queue_passes,
            "fallbacks": dict(self.fallbacks),
            **({KEY_TEST_FAULT: int(self.inject_fault)} if os.environ.get(TEST_FAULTS_ENV) == "1" else {}),
        }

    # -- one scheduling pass --------------------------------------------------------------------------------
    def begin_pass(self, waiting_queue: list[Any]) -> None:
        present = set()
        for req in waiting_queue:
            if getattr(req, _SEQ, None) is None:
                setattr(req, _SEQ, self.next_seq)
                self.next_seq += 1
            present.add(req.rid)
        gone = len(self.last_rids - present)  # admitted since the previous pass (aborts count too)
        self.picks += gone
        self.admitted += gone
        self.passes += 1

    def end_pass(self, waiting_queue: list[Any]) -> None:
        self.last_rids = {req.rid for req in waiting_queue}

    def order(self, reqs: Iterable[Any], deprioritized: set[str] | frozenset[str]) -> list[Any]:
        """The pushed policy's order; SGLang's deprioritised requests (in-batch prefix sharing) last, by age.

        k-LPM orders by each request's ``num_matched_prefix_tokens`` (SGLang's match); slai by SLAI's prefill key
        (the whole prompt's length, shortest first; the strict class first if asked).
        """
        if self.inject_fault:
            raise RuntimeError("injected ordering fault (schedctl_test_fault)")
        by_age = sorted(reqs, key=_seq)
        spec = self.spec
        if not isinstance(spec, SLAISpec) and not self.matches_prefixes():
            return by_age  # fcfs, klpm:1
        head = [r for r in by_age if r.rid not in deprioritized]
        tail = [r for r in by_age if r.rid in deprioritized]
        if isinstance(spec, SLAISpec):
            head.sort(key=lambda r: slai.prefill_key(spec.prefill_order, spec.strict_first, len(r.origin_input_ids),
                                                     slo_class_of(r, self.low_values_first), _seq(r), False))
            return head + tail
        matches = [int(r.num_matched_prefix_tokens) for r in head]
        return klpm_order(head, matches, self.queue_k(), picks=self.picks) + tail

    def fail(self, where: str, exc: BaseException) -> None:
        """Count a fallback; log it with its traceback the first time (per place and exception type)."""
        self.fallbacks[where] += 1
        key = (where, type(exc).__name__)
        if key not in self._logged:
            self._logged.add(key)
            logger.error("schedctl plugin: %s failed (%r); SGLang's own order stands", where, exc, exc_info=exc)


STATE = PluginState()
_registered = False


# -- hooks ------------------------------------------------------------------------------------------------------
def _calc_priority_hook(original: Callable[..., Any], policy: Any, waiting_queue: list[Any], *a: Any, **kw: Any) -> Any:
    if not STATE.active or STATE.in_pass:
        return original(policy, waiting_queue, *a, **kw)
    try:
        STATE.begin_pass(waiting_queue)
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
    """k-LPM when SGLang skipped prefix matching: re-match a bounded number of requests, then order all."""
    if STATE.matches_prefixes():
        from sglang.srt.mem_cache.common import match_kv_cache

        stalest = sorted(waiting_queue, key=lambda r: (getattr(r, _MATCHED_AT, -1), _seq(r)))
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
    except Exception as exc:
        STATE.fail("update_handlers", exc)
    return result


def _get_internal_state_hook(result: Any, controller: Any, *a: Any, **kw: Any) -> Any:
    try:
        result.internal_state[channel.SERVER_INFO_KEY] = STATE.snapshot()
    except Exception as exc:
        STATE.fail("server_info", exc)
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
    _registered = True
    logger.info("schedctl plugin registered for SGLang %s (pid %d)", found, os.getpid())
