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
from schedctl.policies.klpm import klpm_order
from schedctl.policies.spec import KLPMSpec, PolicySpec, SLAISpec, policy_label

logger = logging.getLogger("schedctl.sglang.plugin")

TEST_FAULTS_ENV = "SCHEDCTL_PLUGIN_TEST_FAULTS"  # "1": register the test-only key below (live tests only)
KEY_TEST_FAULT = "schedctl_test_fault"  # 1: every ordering raises (an injected fault), 0: normal
_SEQ = "_schedctl_seq"  # set on SGLang's Req: arrival rank in this scheduler


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
        by_age = sorted(reqs, key=arrival_rank)
        spec = self.spec
        if not isinstance(spec, SLAISpec) and not self.matches_prefixes():
            return by_age  # fcfs, klpm:1
        head = [r for r in by_age if r.rid not in deprioritized]
        tail = [r for r in by_age if r.rid in deprioritized]
        if isinstance(spec, SLAISpec):
            head.sort(key=lambda r: slai.prefill_key(spec.prefill_order, spec.strict_first, len(r.origin_input_ids),
                                                     slo_class_of(r, self.low_values_first), arrival_rank(r), False))
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
