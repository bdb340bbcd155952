"""Give sides their ECR for a TTE_t embedder: ``model.reasoning`` says which sides, ``model.reasoning_from``
where the texts are (ECR files of ``omniret reason``, looked up by content hash).

Sides are changed in place (``Side.reasoning``), before training strips instructions or evaluation
ships sides to Ray workers, so the content hash is the one the ECR job computed. A side without a
stored ECR is embedded without one; how many were missing is logged and returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from omniret.config import OmniretConfig
from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError
from omniret.reasoning.store import EcrLookup

log = logging.getLogger(__name__)


def _lookup(cfg: OmniretConfig) -> EcrLookup | None:
    m = cfg.model
    if m.reasoning == "none":
        return None
    if not m.reasoning_from:
        raise ConfigError(f"model.reasoning={m.reasoning} needs model.reasoning_from (ECR files of `omniret reason`)")
    try:
        return EcrLookup(m.reasoning_from, reasoner=m.reasoning_reasoner, template=m.reasoning_template)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _attach(lookup: EcrLookup, sides: Iterable[Side]) -> tuple[int, int]:
    found = missing = 0
    for side in sides:
        side.reasoning = lookup.get(side)
        found += side.reasoning is not None
        missing += side.reasoning is None
    return found, missing


def _report(what: str, found: int, missing: int) -> tuple[int, int]:
    if missing:
        log.warning("reasoning: %d of %d %s have no stored ECR and are embedded without one", missing,
                    found + missing, what)
    return found, missing


def attach_to_pairs(cfg: OmniretConfig, pairs: Iterable[Pair]) -> tuple[int, int]:
    """Set ``reasoning`` on the chosen sides of ``pairs``; returns (found, missing)."""
    lookup = _lookup(cfg)
    if lookup is None:
        return 0, 0
    side = cfg.model.reasoning
    sides = [s for p in pairs for s in ([p.query] if side in ("query", "both") else [])
             + ([*p.positives, *p.negatives] if side in ("target", "both") else [])]
    return _report("training sides", *_attach(lookup, sides))


def attach_to_datasets(cfg: OmniretConfig, datasets: Iterable) -> tuple[int, int]:
    """Set ``reasoning`` on queries and/or candidates of evaluation datasets; returns (found, missing)."""
    lookup = _lookup(cfg)
    if lookup is None:
        return 0, 0
    side = cfg.model.reasoning
    sides = [s for ds in datasets for s in (ds.queries if side in ("query", "both") else [])
             + (ds.candidates if side in ("target", "both") else [])]
    return _report("evaluation items", *_attach(lookup, sides))
