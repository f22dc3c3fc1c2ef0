"""SGLang's in-batch prefix deprioritisation: of the waiting requests that share a prefix the cache lacks, one
goes ahead per scheduling pass (the others then find that prefix cached).

From SGLang 0.5.23 ``srt/managers/schedule_policy.py`` (``SchedulePolicy._compute_prefix_matches``): in list
order, a request whose cached match is at most ``IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD`` (32) tokens is
matched against a per-pass radix tree of the waiting prompts inserted so far; a match of at least
``IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD`` (32) deprioritises it, otherwise its prompt is inserted. That
match reaches 32 exactly when an inserted prompt has the same first 32 tokens (in the same namespace: SGLang's
extra key and cache salt), so a set of those heads decides the same without a tree.

One implementation, used by the SGLang plugin (above 128 waiting, where SGLang itself skips the pass) and by the
simulator's model of SGLang's pass (``sim/sglang_pass.py``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

CHECK_TOKENS = 32  # IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD: cached match <= this: check the waiting prompts
SHARED_TOKENS = 32  # IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD: a shared head this long: deprioritise


def held_back(
    entries: Iterable[tuple[int, Sequence[int], Hashable]], check_tokens: int = CHECK_TOKENS,
    shared_tokens: int = SHARED_TOKENS,
) -> list[bool]:
    """For each ``(cached match, prompt, namespace)`` in pass order: whether SGLang deprioritises it this pass."""
    seen: set[tuple[Hashable, tuple[int, ...]]] = set()
    out: list[bool] = []
    for match, prompt, namespace in entries:
        hold = False
        if match <= check_tokens:
            head = (namespace, tuple(prompt[:shared_tokens]))
            if len(head[1]) >= shared_tokens and head in seen:
                hold = True
            else:
                seen.add(head)
        out.append(hold)
    return out
