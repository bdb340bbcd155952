"""MMEmb-R1's pair-aware reasoning selection (METHODS §9.1): keep a sampled reasoning for SFT only where it
helps the pair, by a counterfactual with the current embedder.

For a pair (q, t+) with K sampled reasonings c_1..c_K of its query:

    Delta_k = s(q + c_k, t+) - s(q, t+)

where ``q + c_k`` is the query embedded with ``c_k`` rendered after it (``Side.reasoning``, the Think-Then-Embed
rendering the embedder already has) and ``s`` the cosine of the current embedder. The reasoning with the
largest Delta is kept when that Delta exceeds ``margin`` (0 by default: "improves the alignment"); otherwise
the pair trains the no-think form. Only the abstract of the paper was available: the choice of the
arg-max among several helpful reasonings and the margin are ours.

Candidates come from K ECR files (``omniret reason`` with sampled decoding, one run per seed, or teacher
traces): traces ``<think> reasoning </think> summary``, looked up by content hash like any ECR. The step
writes, under ``out``:

- ``ecr.jsonl``: the SFT targets of the queries (reasoner id ``pair_aware``): the kept trace, or the
  no-think trace ``<think></think> summary`` (an empty block, the no-think form of
  :mod:`omniret.training.rl.adaptive`; the summary is that of the first candidate). Point
  ``model.reasoning_from`` of the SFT stage at it;
- ``selection.jsonl``: per pair, every Delta, the decision and the kept candidate;
- ``summary.json``: pairs, share reasoning, mean Delta of the kept and of all candidates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omniret.data.schema import Pair
from omniret.errors import MediaError
from omniret.reasoning.store import ECR_FILE, EcrLookup, EcrWriter, content_hash, record_key
from omniret.reasoning.templates import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)

SELECTED_REASONER = "pair_aware"
SELECTION_FILE, SUMMARY_FILE = "selection.jsonl", "summary.json"


@dataclass
class Choice:
    pair: str
    base: float  # s(q, t+)
    deltas: list[float] = field(default_factory=list)  # one per candidate, in candidate order
    kept: int | None = None  # index of the kept candidate; None: no-think
    reason: str = ""  # why a pair could not be scored (then no-think)

    @property
    def think(self) -> bool:
        return self.kept is not None


def choose(deltas: Sequence[float], margin: float = 0.0) -> int | None:
    """Index of the candidate to keep: the largest Delta if it exceeds ``margin`` (first on ties), else None."""
    if not len(deltas):
        return None
    best = int(np.argmax(np.asarray(deltas, dtype=np.float64)))
    return best if deltas[best] > margin else None


def split_trace(trace: str) -> tuple[str, str]:
    """(reasoning, summary) of a trace ``<think> reasoning </think> summary`` (unclosed: all reasoning)."""
    body = trace.strip()
    body = body[len(THINK_OPEN):] if body.startswith(THINK_OPEN) else body
    think, closed, summary = body.partition(THINK_CLOSE)
    return (think.strip(), summary.strip()) if closed else (body.strip(), "")


def score_pairs(pairs: Sequence[Pair], candidates: Sequence[Sequence[str]], embedder, margin: float = 0.0
                ) -> list[Choice]:
    """One :class:`Choice` per pair; ``candidates[i]`` are the sampled reasonings of ``pairs[i]``'s query.

    Items are embedded in one lenient pass (``Embedder.encode_lenient``): a pair whose query or positive
    cannot be read gets no-think with the reason; an unreadable candidate is left out of its pair.
    """
    if len(candidates) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but candidates for {len(candidates)}")
    items, slots = [], []  # slots[i] = (query index, positive index, [candidate indices])
    for pair, cands in zip(pairs, candidates, strict=True):
        name = pair.id or pair.dataset or "pair"
        q = len(items)
        items += [pair.query.to_item(name=f"{name} query"), pair.positives[0].to_item(name=f"{name} positive")]
        with_reasoning = [dataclasses.replace(pair.query, reasoning=c) for c in cands]
        slots.append((q, q + 1, list(range(len(items), len(items) + len(cands)))))
        items += [s.to_item(name=f"{name} query + reasoning {k}") for k, s in enumerate(with_reasoning)]
    vectors, kept, errors = embedder.encode_lenient(items)
    got = {i: v for i, v in zip(kept, vectors, strict=True)}
    reasons = {getattr(e, "name", ""): getattr(e, "reason", str(e)) for e in errors}
    out = []
    for pair, (q, t, cands) in zip(pairs, slots, strict=True):
        name = pair.id or pair.dataset or "pair"
        if q not in got or t not in got:
            out.append(Choice(name, float("nan"), reason=reasons.get(f"{name} query") or
                              reasons.get(f"{name} positive") or "unreadable query or positive"))
            continue
        base = float(got[q] @ got[t])
        # An unreadable candidate cannot help: -inf keeps it from being chosen, and it is reported as NaN.
        deltas = [float(got[c] @ got[t]) - base if c in got else float("-inf") for c in cands]
        best = choose(deltas, margin)
        out.append(Choice(name, base, [d if np.isfinite(d) else float("nan") for d in deltas], best))
    return out


def write_selection(pairs: Sequence[Pair], candidates: Sequence[Sequence[str]], choices: Sequence[Choice],
                    out: str | Path, templates: Sequence[str]) -> dict[str, Any]:
    """Write ``ecr.jsonl`` (the SFT traces), ``selection.jsonl`` and ``summary.json``; return the summary.

    ``templates[i]`` is the reasoner template name pair ``i``'s candidates were written with (the key an
    embedder's ECR lookup uses)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, seen = [], set()
    with (out / SELECTION_FILE).open("w") as fh:
        for pair, cands, choice, template in zip(pairs, candidates, choices, templates, strict=True):
            fh.write(json.dumps({**asdict(choice), "think": choice.think,
                                 "reasoning": cands[choice.kept] if choice.think else None}) + "\n")
            if not cands:
                continue
            try:
                digest = content_hash(pair.query, choice.pair)
            except MediaError:
                continue
            key = record_key(digest, template, SELECTED_REASONER)
            if key in seen:
                continue
            seen.add(key)
            think, summary = split_trace(cands[choice.kept if choice.think else 0])
            if not choice.think:
                think = ""
            records.append({"key": key, "content_hash": digest, "template": template, "reasoner": SELECTED_REASONER,
                            "name": f"{choice.pair} query", "role": "query", "dataset": pair.dataset,
                            "text": f"{THINK_OPEN}{think}{THINK_CLOSE} {summary}".rstrip(), "think": think,
                            "summary": summary, "closed": True, "truncated": False, "new_tokens": 0,
                            "source": SELECTED_REASONER,
                            "delta": choice.deltas[choice.kept] if choice.think else None})
    (out / ECR_FILE).unlink(missing_ok=True)  # a re-run writes the selection of this embedder, not an old one's
    writer = EcrWriter(out)
    writer.append(records)
    scored = [c for c in choices if not c.reason]
    all_deltas = [d for c in scored for d in c.deltas if np.isfinite(d)]
    summary = {"pairs": len(choices), "scored": len(scored), "reasoning": sum(c.think for c in choices),
               "share_reasoning": sum(c.think for c in choices) / len(choices) if choices else 0.0,
               "mean_delta_kept": float(np.mean([c.deltas[c.kept] for c in scored if c.think]))
               if any(c.think for c in scored) else None,
               "mean_delta_all": float(np.mean(all_deltas)) if all_deltas else None,
               "unscored": [f"{c.pair}: {c.reason}" for c in choices if c.reason][:20]}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def load_candidates(pairs: Sequence[Pair], sources: Sequence[str | Path], templates: Sequence[str]
                    ) -> list[list[str]]:
    """Each pair's query traces, one per ECR source (a file or folder) that has one, in source order."""
    lookups = [EcrLookup([source]) for source in sources]
    out = []
    for pair, template in zip(pairs, templates, strict=True):
        name = f"{pair.id or pair.dataset or 'pair'} query"
        out.append([text for lookup in lookups if (text := lookup.get(pair.query, template, name)) is not None])
    return out


def run_selection(cfg, sources: Sequence[str | Path], out: str | Path, margin: float = 0.0) -> dict[str, Any]:
    """The data step: the pairs of ``data.train``, candidates from ``sources``, the embedder of ``model``."""
    from omniret.data.mixing import load_mixture
    from omniret.models.embedder import Embedder
    from omniret.reasoning.attach import template_name

    if len(sources) < 1:
        raise ValueError("pair-aware selection needs at least one ECR source of candidate reasonings")
    mixture, _ = load_mixture(cfg.data)
    pairs = [p for group in mixture.groups.values() for p in group]
    templates = [template_name(cfg, p.task) for p in pairs]
    candidates = load_candidates(pairs, sources, templates)
    model_cfg = cfg.model_copy(deep=True)
    model_cfg.model.reasoning = "none"  # the candidates are rendered here, one at a time
    model_cfg.embed.progress = False
    choices = score_pairs(pairs, candidates, Embedder.from_config(model_cfg), margin)
    summary = write_selection(pairs, candidates, choices, out, templates)
    log.info("pair-aware selection: %d of %d pairs keep a reasoning (%s)", summary["reasoning"], summary["pairs"], out)
    return summary
