"""Turn a worker's share of a batch of pairs into model inputs: queries, positives, K hard negatives.

Every rank knows the whole global batch (the sampler is deterministic and identical on all ranks)
and takes a contiguous slice of it (:func:`shard`). Pairs are decoded and tokenised here, on the
worker's CPU; a pair whose media cannot be read is dropped from the step with its id and the reason
(the run goes on). Stage-1 training drops the task instructions (``instructions=False``), so the
template's default prompt is used. A query gets ``K = min(negatives, most negatives of a pair in the
shard)`` explicit negatives, so the (B, K, D) negative tensor is rectangular; a pair with fewer than K
fills its missing slots (:func:`plan_negatives`) instead of shrinking K for the whole shard, and the
fills are counted and logged. :class:`EncodeCache` keeps encoded items (decoded pixels, token ids)
for the next epochs, up to a memory budget.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from omniret.data.schema import Pair, Side
from omniret.errors import MediaError
from omniret.models.encoding import Encoded, InputEncoder

log = logging.getLogger(__name__)
_told_filled = False  # the filled-negatives notice goes to the console once per process


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s contiguous share of ``indices`` (sizes differ by at most one)."""
    n = len(indices)
    return list(indices[rank * n // world:(rank + 1) * n // world])


@dataclass
class StepInputs:
    queries: list[Encoded] = field(default_factory=list)
    targets: list[Encoded] = field(default_factory=list)
    negatives: list[Encoded] = field(default_factory=list)  # query-major, K per query
    task_ids: list[int] = field(default_factory=list)
    target_keys: list[str] = field(default_factory=list)  # identifies each positive's content
    query_modality: list[list[bool]] = field(default_factory=list)  # [text, image, audio, video] per query
    target_modality: list[list[bool]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # "pair id: reason" of pairs left out
    # Teacher logits of [positive, its K negatives] per query, from pairs that carry them (distillation);
    # one entry per query when every kept pair has scores, so it stacks to the loss's (B, 1 + K).
    teacher_scores: list[list[float]] = field(default_factory=list)
    filled: int = 0  # negative slots filled from other pairs of the shard (pairs short of K negatives)
    kept: list[int] = field(default_factory=list)  # index in the encoded pairs of each row

    @property
    def rows(self) -> int:
        return len(self.queries)

    @property
    def negatives_per_query(self) -> int:
        return len(self.negatives) // self.rows if self.rows else 0


def training_side(side: Side, instructions: bool) -> Side:
    """The side as trained: without its instruction in instruction-free (stage-1) training."""
    return side if instructions or side.instruction is None else dataclasses.replace(side, instruction=None)


class EncodeCache:
    """Least-recently-used encoded items, keyed by content, within ``max_mb`` of patch and token memory."""

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.items: OrderedDict[str, tuple[Encoded, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: str, encode: Callable[[], Encoded]) -> Encoded:
        found = self.items.get(key)
        if found is not None:
            self.items.move_to_end(key)
            self.hits += 1
            return found[0]
        self.misses += 1
        encoded = encode()
        size = 8 * len(encoded.input_ids) + sum(v.patches.nbytes for v in encoded.visuals)
        if size <= self.max_bytes:
            self.items[key] = (encoded, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self.items.popitem(last=False)
                self.bytes -= dropped
        return encoded


def leave_out(dropped: list[str], name: str, exc: Exception) -> None:
    """Record (``"pair id: reason"``) and log a pair that cannot be used in this step."""
    dropped.append(f"{name}: {exc}")
    log.warning("training pair %s left out of the step: %s", name, exc)


def _encode(encoder: InputEncoder, side: Side, label: str) -> Encoded:
    return encoder.encode(side.to_item(name=label))


def plan_negatives(pairs: Sequence[Pair], negatives: int, instructions: bool = True,
                   fill: bool = True) -> tuple[list[list[Side]], int]:
    """K explicit negatives for every pair (as trained) and the number of slots filled from other pairs.

    ``K = min(negatives, most negatives of any pair)``. A pair short of K keeps its own negatives and
    fills the rest, in order, from the other pairs' explicit negatives, then their positives (these are
    already in-batch negatives: the fill then counts one of them twice, the least bad choice when the
    shard has nothing else), skipping anything whose content equals one of the pair's own positives or
    is already among its negatives (a pair's own negative equal to its positive is left out too, so no
    slot holds a copy of the row's positive: the losses' duplicate masks rely on it). Batches are
    homogeneous (one dataset), so a borrowed negative is on the pair's task. Only when nothing can fill a slot does K shrink, to what every pair can reach.

    ``fill=False`` (pairs with teacher scores: distillation needs the teacher's score of every slot, and
    a borrowed negative has none) keeps only own negatives: K is the fewest any pair has.
    """
    k = min(negatives, max((len(p.negatives) for p in pairs), default=0))
    if k == 0:
        return [[] for _ in pairs], 0
    own = [_own_negatives(p, k, instructions) for p in pairs]
    if not fill:
        fewest = min(len(m) for m in own)
        return [m[:fewest] for m in own], 0
    pool = [s for side_list in own for s in side_list] + [training_side(p.positives[0], instructions) for p in pairs]
    plans, filled = [], 0
    for pair, mine in zip(pairs, own, strict=True):  # own negatives first, then borrowed ones
        taken = {training_side(s, instructions).key() for s in pair.positives} | {s.key() for s in mine}
        plan = list(mine)
        for side in pool:
            if len(plan) == k:
                break
            if side.key() not in taken:
                plan.append(side)
                taken.add(side.key())
        filled += len(plan) - len(mine)
        plans.append(plan)
    reachable = min(len(p) for p in plans)
    if reachable < k:  # nothing left to borrow: every pair keeps the same number of slots
        plans = [p[:reachable] for p in plans]
        filled = sum(max(0, reachable - len(m)) for m in own)
    return plans, filled


def _own_negatives(pair: Pair, k: int, instructions: bool) -> list[Side]:
    """Up to ``k`` of the pair's negatives, as trained, leaving out copies of its own positives."""
    positives = {training_side(s, instructions).key() for s in pair.positives}
    sides = [training_side(s, instructions) for s in pair.negatives]
    return [s for s in sides if s.key() not in positives][:k]


def encode_pairs(pairs: Sequence[Pair], encoder: InputEncoder, negatives: int = 0,
                 instructions: bool = True, cache: EncodeCache | None = None) -> StepInputs:
    """Encode queries, first positives and K explicit negatives of ``pairs`` (:func:`plan_negatives`)."""
    scored = any(p.teacher_scores is not None for p in pairs)
    planned, filled = plan_negatives(pairs, negatives, instructions, fill=not scored)
    out = StepInputs(filled=filled)
    if filled:  # every step counts them in metrics.csv (filled_negatives); the console hears it once
        global _told_filled
        log.log(logging.DEBUG if _told_filled else logging.INFO,
                "%d negative slot(s) filled from other pairs: %d pair(s) have fewer than %d negatives%s",
                filled, sum(len(p.negatives) < len(planned[0]) for p in pairs), len(planned[0]),
                "" if _told_filled else " (later steps: the filled_negatives column of metrics.csv)")
        _told_filled = True
    for pair, negs in zip(pairs, planned, strict=True):
        name = pair.id or pair.dataset
        try:
            query = training_side(pair.query, instructions)
            positive = training_side(pair.positives[0], instructions)
            roles = [(query, "query"), (positive, "positive"), *((s, f"negative {i}") for i, s in enumerate(negs))]
            makers = [functools.partial(_encode, encoder, s, f"{name} {role}") for s, role in roles]
            encoded = [cache.get(s.key(), make) if cache else make() for (s, _), make in zip(roles, makers, strict=True)]
        except (MediaError, OSError, ValueError) as exc:
            leave_out(out.dropped, name, exc)
            continue
        out.kept.append(len(out.kept) + len(out.dropped))
        out.queries.append(encoded[0])
        out.targets.append(encoded[1])
        out.negatives += encoded[2:]
        out.task_ids.append(pair.task_id)
        out.target_keys.append(positive.key())
        out.query_modality.append(modality_flags(query))
        out.target_modality.append(modality_flags(positive))
        if pair.teacher_scores is not None:  # the scores of the slots taken, by the negatives' positions
            slot = {training_side(s, instructions).key(): 1 + j for j, s in enumerate(pair.negatives)}
            out.teacher_scores.append([pair.teacher_scores[0], *(pair.teacher_scores[slot[s.key()]] for s in negs)])
    return out


def modality_flags(side: Side) -> list[bool]:
    """Presence of [text, image, audio, video] (the e5-omni modality order; a PDF page is an image)."""
    text, image, video, page = side.flags
    return [text, image or page, False, video]


def duplicate_mask(keys: Sequence[str]) -> list[list[bool]]:
    """(B_g, B_g) True where two rows' positives have the same content (extra in-batch positives)."""
    return [[a == b for b in keys] for a in keys]
