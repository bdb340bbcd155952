"""Which pairs form each training batch: homogeneous batches, resampling weights, the GVE curriculum.

The :class:`~omniret.data.mixing.Mixture` has already capped the datasets, merged the classification
sets into one group and turned ``data.weights`` into group probabilities. :class:`BatchSampler`
draws from it:

- **homogeneous** (RzenEmbed §3.4.2, VLM2Vec-V2): each batch comes from one group, the group drawn
  with the epoch's probabilities; otherwise every row draws its own group (mixed batches);
- each group is a stream of seeded permutations of its pairs: a batch takes the next ``b`` pairs,
  ``b = min(batch_size, group size)``; a remainder shorter than ``b`` is dropped and a new
  permutation starts, so a batch never holds the same pair twice;
- **GVE modality pyramid** (METHODS §4.1): at each decision the model probes every group's
  alignment ``R_k`` (mean cosine of query and positive over a few pairs) and groups are drawn with
  ``P(k) ∝ base_k * exp(R_k / sigma)``; ``base_k`` are the mixture's probabilities (uniform weights
  reduce it to GVE's softmax). Well-aligned groups come first, the schedule flattens later.
  GVE decides at each of its 3 epoch starts; here a decision is taken at every epoch start and
  every ``interval`` steps (:func:`pyramid_interval`), and sigma follows the optimiser step
  (:func:`sigma_at_step`), so a one-epoch run also moves from ``sigma_min`` to ``sigma_max``.
  A decision inside an epoch changes the probabilities from the current position on
  (:meth:`BatchSampler.update_probabilities`); the batches already drawn are unchanged.

Everything is a function of (seed, epoch, the epoch's probability phases): an epoch's plan is
rebuilt from :class:`SamplerState` (epoch, position, probabilities, phases), so a resumed run
continues with exactly the batches an uninterrupted run would have drawn; the probe is not repeated
on resume.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from omniret.data.mixing import Mixture
from omniret.data.schema import Pair


@dataclass
class Batch:
    """One global batch: indices into :attr:`BatchSampler.pairs`, the group(s) they came from."""

    indices: list[int]
    group: str  # the group of a homogeneous batch; "mixed" otherwise
    epoch: int
    position: int  # index of this batch within its epoch

    def fingerprint(self) -> int:
        """A checksum of the indices (logged per step so runs and resumes can be compared)."""
        return zlib.crc32(",".join(map(str, self.indices)).encode())


@dataclass
class SamplerState:
    epoch: int = 0
    position: int = 0  # batches of this epoch already drawn
    probabilities: dict[str, float] | None = None  # this epoch's group probabilities (None: not begun)
    alignment: dict[str, float] | None = None  # this epoch's probe results (pyramid)
    sigma: float | None = None
    # later decisions of this epoch: [position, probabilities] from which each one applies
    phases: list[list[Any]] | None = None
    decided_step: int | None = None  # optimiser step of the latest curriculum decision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplerState:
        return cls(**dict(data))


@dataclass
class BatchSampler:
    mixture: Mixture
    batch_size: int
    seed: int = 0
    homogeneous: bool = True
    steps_per_epoch: int | None = None
    state: SamplerState = field(default_factory=SamplerState)
    # B3 (training/b3.py): per group, communities as positions within the group; batches take whole ones
    communities: Mapping[str, list[list[int]]] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.groups = [g for g in sorted(self.mixture.groups) if self.mixture.groups[g]]
        if not self.groups:
            raise ValueError("the mixture has no pairs to sample")
        self.pairs: list[Pair] = []
        self.members: dict[str, list[int]] = {}
        for group in self.groups:
            start = len(self.pairs)
            self.pairs += self.mixture.groups[group]
            self.members[group] = list(range(start, len(self.pairs)))
        if self.steps_per_epoch is None:
            self.steps_per_epoch = max(1, len(self.pairs) // self.batch_size)
        self._plan: list[Batch] | None = None

    @property
    def base_probabilities(self) -> dict[str, float]:
        raw = {g: self.mixture.probabilities.get(g, 0.0) for g in self.groups}
        total = sum(raw.values())
        if total <= 0:
            raise ValueError("every group has probability 0")
        return {g: p / total for g, p in raw.items()}

    # ---- epochs ------------------------------------------------------------------------------
    @property
    def needs_epoch_start(self) -> bool:
        return self.state.probabilities is None

    def begin_epoch(self, probabilities: Mapping[str, float] | None = None, *,
                    alignment: Mapping[str, float] | None = None, sigma: float | None = None) -> None:
        """Fix this epoch's group probabilities (default: the mixture's) and build its plan."""
        probs = dict(probabilities or self.base_probabilities)
        unknown = set(probs) - set(self.groups)
        if unknown:
            raise ValueError(f"probabilities name unknown groups {sorted(unknown)}")
        self.state.probabilities = probs
        self.state.alignment = dict(alignment) if alignment is not None else None
        self.state.sigma = sigma
        self.state.phases = None
        self._plan = None

    def update_probabilities(self, probabilities: Mapping[str, float], *,
                             alignment: Mapping[str, float] | None = None, sigma: float | None = None) -> None:
        """New group probabilities from the current position of this epoch on (a decision inside an epoch).

        The plan is rebuilt from the epoch start with the phases so far; the random draws are consumed one
        per position whatever the probabilities, so the batches already drawn stay exactly the same.
        """
        if self.state.probabilities is None:
            raise RuntimeError("call begin_epoch() first")
        probs = dict(probabilities)
        unknown = set(probs) - set(self.groups)
        if unknown:
            raise ValueError(f"probabilities name unknown groups {sorted(unknown)}")
        phases = [p for p in (self.state.phases or []) if p[0] < self.state.position]
        self.state.phases = [*phases, [self.state.position, probs]]
        self.state.alignment = dict(alignment) if alignment is not None else None
        self.state.sigma = sigma
        self._plan = None

    @property
    def current_probabilities(self) -> dict[str, float] | None:
        """The group probabilities the next batch is drawn with."""
        if self.state.phases:
            return dict(self.state.phases[-1][1])
        return self.state.probabilities

    def plan(self) -> list[Batch]:
        """Every batch of the current epoch (deterministic given seed, epoch and probabilities)."""
        if self.state.probabilities is None:
            raise RuntimeError("call begin_epoch() first")
        if self._plan is None:
            phases = [(0, self.state.probabilities), *((int(at), p) for at, p in self.state.phases or [])]
            self._plan = self._build_plan(self.state.epoch, phases)
        return self._plan

    def next(self) -> Batch:
        """The next batch; the epoch advances after its last batch (call begin_epoch() again then)."""
        if self.needs_epoch_start:
            self.begin_epoch()
        batch = self.plan()[self.state.position]
        self.state.position += 1
        if self.state.position >= len(self.plan()):
            self.state = SamplerState(epoch=self.state.epoch + 1)
            self._plan = None
        return batch

    def pairs_of(self, batch: Batch) -> list[Pair]:
        return [self.pairs[i] for i in batch.indices]

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def load_state_dict(self, data: Mapping[str, Any]) -> None:
        self.state = SamplerState.from_dict(data)
        self._plan = None

    # ---- internals ---------------------------------------------------------------------------
    def _build_plan(self, epoch: int, phases: list[tuple[int, Mapping[str, float]]]) -> list[Batch]:
        rng = random.Random(f"{self.seed}/plan/{epoch}")
        streams = {g: self._stream(g, f"{self.seed}/{epoch}/{g}") for g in self.groups}
        starts = {start: probabilities for start, probabilities in phases}
        plan = []
        for position in range(self.steps_per_epoch):
            if position in starts:
                names = [g for g in self.groups if starts[position].get(g, 0.0) > 0]
                if not names:
                    raise ValueError(f"every group has probability 0 (epoch {epoch}, position {position})")
                weights = [starts[position][g] for g in names]
            if self.homogeneous:
                group = rng.choices(names, weights)[0]
                size = min(self.batch_size, len(self.members[group]))
                indices, label = streams[group].take(size), group
            else:
                rows = rng.choices(names, weights, k=self.batch_size)
                indices, label = [streams[g].take(1)[0] for g in rows], "mixed"
            plan.append(Batch(indices, label, epoch, position))
        return plan

    def _stream(self, group: str, key: str):
        if self.communities is None:
            return _Stream(self.members[group], key)
        if not self.homogeneous:
            raise ValueError("B3 batches need homogeneous batches (communities are built per group)")
        from omniret.training.b3 import CommunityStream

        members = self.members[group]
        return CommunityStream([[members[i] for i in c] for c in self.communities[group]], key)


class _Stream:
    """Consecutive seeded permutations of a group's members; a short remainder is skipped."""

    def __init__(self, members: list[int], key: str):
        self.members, self.key = members, key
        self.cycle, self.order, self.cursor = 0, self._permutation(0), 0

    def _permutation(self, cycle: int) -> list[int]:
        order = list(self.members)
        random.Random(f"{self.key}/{cycle}").shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        if self.cursor + n > len(self.order):
            self.cycle += 1
            self.order, self.cursor = self._permutation(self.cycle), 0
        out = self.order[self.cursor:self.cursor + n]
        self.cursor += n
        return out


# ---- GVE modality pyramid ----------------------------------------------------------------------


def sigma_at(epoch: int, epochs: int, sigma_min: float = 0.1, sigma_max: float = 1.0) -> float:
    """Linear per-epoch schedule: sigma_min at the first epoch, sigma_max at the last (GVE's reading)."""
    if epochs <= 1:
        return sigma_min
    return sigma_min + (sigma_max - sigma_min) * min(epoch, epochs - 1) / (epochs - 1)


def pyramid_interval(total_steps: int, steps_per_epoch: int, every: int | None = None,
                     decisions: int = 3) -> int:
    """Steps between pyramid decisions: ``every`` when set, else at most an epoch and at least
    ``decisions`` per run (GVE decides at each of its 3 epochs; a shorter run keeps 3 decisions)."""
    if every is not None:
        if every < 1:
            raise ValueError(f"the probe interval must be >= 1 step, got {every}")
        return every
    return max(1, min(steps_per_epoch, math.ceil(total_steps / decisions)))


def sigma_at_step(step: int, total_steps: int, interval: int, sigma_min: float = 0.1,
                  sigma_max: float = 1.0) -> float:
    """sigma of a decision taken before optimiser step ``step`` (0-based): linear in the step, from
    ``sigma_min`` at step 0 to ``sigma_max`` at the last decision (``total_steps - interval``).

    With one decision per epoch (``interval`` = steps per epoch) this is :func:`sigma_at`: 3 epochs give
    0.1, 0.55, 1.0. A run with a single decision stays at ``sigma_min``.
    """
    span = total_steps - interval
    if span <= 0:
        return sigma_min
    return sigma_min + (sigma_max - sigma_min) * min(1.0, max(0, step) / span)


def pyramid_due(step: int, interval: int, decided_step: int | None) -> bool:
    """Whether a pyramid decision is due before optimiser step ``step`` (not already taken there)."""
    return step % interval == 0 and decided_step != step


def pyramid_probabilities(base: Mapping[str, float], alignment: Mapping[str, float],
                          sigma: float) -> dict[str, float]:
    """``P(k) ∝ base_k * exp(R_k / sigma)`` (computed stably); groups without a probe keep weight 0."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    names = [g for g in base if g in alignment and base[g] > 0]
    if not names:
        raise ValueError("no group has both a probability and an alignment score")
    top = max(alignment[g] / sigma for g in names)
    raw = {g: base[g] * math.exp(alignment[g] / sigma - top) for g in names}
    total = sum(raw.values())
    return {g: raw.get(g, 0.0) / total for g in base}


def probe_sets(sampler: BatchSampler, per_group: int, epoch: int) -> dict[str, list[Pair]]:
    """A seeded choice of ``per_group`` pairs of every group, for the alignment probe."""
    out = {}
    for group in sampler.groups:
        members = sampler.members[group]
        rng = random.Random(f"{sampler.seed}/probe/{epoch}/{group}")
        chosen = rng.sample(members, min(per_group, len(members)))
        out[group] = [sampler.pairs[i] for i in chosen]
    return out


def alignment_scores(probes: Mapping[str, list[Pair]],
                     similarity: Callable[[list[Pair]], list[float]]) -> dict[str, float]:
    """``R_k``: mean query-positive similarity of each group's probe pairs (``similarity`` embeds them)."""
    scores = {}
    for group, pairs in probes.items():
        values = similarity(pairs)
        if values:
            scores[group] = float(sum(values) / len(values))
    return scores
