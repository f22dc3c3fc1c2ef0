"""What the schedctl plugin keeps in one SGLang scheduler process: the pushed policy, its k-LPM pick counter,
per-pass bookkeeping and its fallback counts (``plugin.py`` holds the hooks that drive it).

The control channel's checks (``check``, ``set_field``) run inside SGLang's ``/set_internal_state``; ``order``
runs inside a scheduling pass. Nothing here imports SGLang: requests are SGLang's ``Req`` objects, read through
their attributes.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from schedctl.engine_adapter.sglang import channel
from schedctl.policies import slai
from schedctl.policies.orders import queue_order, sglang_pass_order
from schedctl.policies.spec import KLPMSpec, PolicySpec, SLAISpec, policy_label
from schedctl.policies.waiting import order_waiting

logger = logging.getLogger("schedctl.sglang.plugin")

TEST_FAULTS_ENV = "SCHEDCTL_PLUGIN_TEST_FAULTS"  # "1": register the test-only key below (live tests only)
KEY_TEST_FAULT = "schedctl_test_fault"  # 1: every ordering raises (an injected fault), 0: normal
_SEQ = "_schedctl_seq"  # set on SGLang's Req: arrival rank in this scheduler
_BORN_PASS = "_schedctl_born_pass"  # set on SGLang's Req: the pass count when the plugin first saw it (aging)


def arrival_rank(req: Any) -> int:
    """The rank in first-seen order the plugin gave this request in this scheduler."""
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
        self.processed_tokens = 0  # SGLang's processed_tokens_counter at this pass (calc_priority's argument): hrrn
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

    def matches_prefixes(self) -> bool:
        """Whether the pushed policy orders by SGLang's prefix matches (every queue order but fcfs, sglang:fcfs)."""
        spec = self.spec
        return isinstance(spec, KLPMSpec) and spec.k != 1

    def label(self) -> str:
        spec = self.spec
        return "off" if spec is None else policy_label(spec)

    # -- control channel ------------------------------------------------------------------------------------
    def check(self, key: str, value: Any, base_policy: str | None) -> None:
        """Raise ValueError if ``key=value`` cannot be applied on this scheduler.

        SGLang validates every key of a push before it applies any, so kind and k are checked together once
        both are in the push (the sidecar always sends both): the numbers must decode, and an order that reads
        SGLang's prefix matches needs the server's base policy lpm. A kind pushed without its k is checked alone
        (a known code; the base policy when every order of that kind reads matches).
        """
        if key == KEY_TEST_FAULT:
            channel.as_int(value, key)
            return
        if key not in channel.KEYS:
            raise ValueError(f"not a schedctl key: {key}")
        try:
            self._pending[key] = channel.as_int(value, key)
            if key == channel.KEY_VERSION:
                return
            kind = self._pending.get(channel.KEY_KIND, self.kind)
            if kind not in channel.KIND_CODES:
                raise ValueError(f"unknown {channel.KEY_KIND} {kind}: this plugin knows {channel.KIND_CODES}")
            both = channel.KEY_KIND in self._pending and channel.KEY_K in self._pending
            k = self._pending.get(channel.KEY_K, self.k)
            if both or key == channel.KEY_K:
                spec = channel.decode_policy(kind, k)  # unknown flags, orders and bounds raise here
                needs = channel.needs_prefix_match(kind, k)
            else:
                spec, needs = None, kind != channel.KIND_SGLANG and channel.needs_prefix_match(kind, channel.K_INF)
            if needs and base_policy != "lpm":
                what = policy_label(spec) if spec is not None else channel.KIND_CODES[kind]
                raise ValueError(
                    f"{what} needs SGLang started with --schedule-policy lpm and the radix cache on "
                    f"(this scheduler runs {base_policy!r})"
                )
        except ValueError:
            self._pending.clear()  # SGLang stops at the first rejection: the next push starts afresh
            raise

    def discard_pending(self) -> None:
        """Forget the values validated in a push that will not be applied (another check refused it)."""
        self._pending.clear()

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
                setattr(req, _BORN_PASS, self.passes)
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

        The queue orders (``order_waiting``, shared with the simulator) read each request's
        ``num_matched_prefix_tokens`` (SGLang's match): k-LPM, lpm-aging (passes since the plugin first saw it),
        spf (SGLang's ``_shortest_prefill_work`` lengths: prompt and output so far), hrrn (SGLang's
        ``_uncached_len`` length, the prompt, and its ``arrival_processed_tokens`` against the pass's
        ``processed_tokens``). ``sglang:`` orders sort SGLang's list as SGLang does (``orders.sglang_pass_order``),
        ties in list order. slai by SLAI's prefill key (the whole prompt's length, shortest first; the strict class
        first if asked).
        """
        if self.inject_fault:
            raise RuntimeError("injected ordering fault (schedctl_test_fault)")
        spec = self.spec
        if isinstance(spec, KLPMSpec) and spec.sglang:
            return self._sglang_order(list(reqs), spec, deprioritized)
        by_age = sorted(reqs, key=arrival_rank)
        if not isinstance(spec, SLAISpec) and not self.matches_prefixes():
            return by_age  # fcfs, klpm:1
        head = [r for r in by_age if r.rid not in deprioritized]
        tail = [r for r in by_age if r.rid in deprioritized]
        if isinstance(spec, SLAISpec):
            head.sort(key=lambda r: slai.prefill_key(spec.prefill_order, spec.strict_first, len(r.origin_input_ids),
                                                     slo_class_of(r, self.low_values_first), arrival_rank(r), False))
            return head + tail
        assert isinstance(spec, KLPMSpec)
        matches = [int(r.num_matched_prefix_tokens) for r in head]
        return order_waiting(
            head, matches, queue_order(spec), picks=self.picks, lengths=[_length(r, spec.rank) for r in head],
            born_passes=[int(getattr(r, _BORN_PASS, self.passes)) for r in head], passes=self.passes,
            born_tokens=[int(getattr(r, "arrival_processed_tokens", 0)) for r in head],
            processed_tokens=self.processed_tokens,
        ) + tail

    def _sglang_order(self, reqs: list[Any], spec: KLPMSpec, deprioritized: set[str] | frozenset[str]) -> list[Any]:
        rank = None if spec.k == 1 else spec.rank
        idx = sglang_pass_order(
            rank, [int(r.num_matched_prefix_tokens) for r in reqs], [_length(r, spec.rank) for r in reqs],
            [r.rid in deprioritized for r in reqs],
            [self.processed_tokens - int(getattr(r, "arrival_processed_tokens", 0)) for r in reqs],
        )
        return [reqs[i] for i in idx]

    def fail(self, where: str, exc: BaseException) -> None:
        """Count a fallback; log it with its traceback the first time (per place and exception type)."""
        self.fallbacks[where] += 1
        key = (where, type(exc).__name__)
        if key not in self._logged:
            self._logged.add(key)
            logger.error("schedctl plugin: %s failed (%r); SGLang's own order stands", where, exc, exc_info=exc)


def _length(req: Any, rank: str) -> int:
    """The length a rank counts, as SGLang 0.5.23 does (``schedule_policy.py``): hrrn's ``_uncached_len`` the
    prompt; spf's ``_shortest_prefill_work`` the prompt and the output so far (a retracted request's too)."""
    n = len(req.origin_input_ids)
    return n if rank == "hrrn" else n + len(getattr(req, "output_ids", ()) or ())
