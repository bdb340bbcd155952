"""Group items into batches by token budget: padded length x rows stays under a limit.

Sorting by length first keeps padding small; an item longer than the budget gets a batch of its own.
"""

from __future__ import annotations


def plan_batches(lengths: list[int], max_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped so that max(length) * len(batch) <= max_tokens per batch."""
    if max_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_tokens and max_batch_size must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        grown = max(longest, lengths[i])
        if current and (grown * (len(current) + 1) > max_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches
