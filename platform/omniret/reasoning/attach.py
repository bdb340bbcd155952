"""Give sides their ECR for a TTE_t embedder: ``model.reasoning`` says which sides, ``model.reasoning_from``
where the texts are (ECR files of ``omniret reason``, looked up by content hash).

Each side's ECR is the one written with the template its task maps to (``reason.template``, as the
job chose it). Sides are changed in place (``Side.reasoning``), before training strips instructions or evaluation
ships sides to Ray workers, so the content hash is the one the ECR job computed. A side without a
stored ECR is embedded without one; how many were missing is logged and returned. Sides the
setting does not choose lose any ``reasoning`` they carried (``none`` clears them all).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from omniret.config import OmniretConfig
from omniret.data.schema import Pair, Side
from omniret.errors import ConfigError
from omniret.reasoning.store import EcrLookup
from omniret.reasoning.templates import chosen_template

log = logging.getLogger(__name__)


def _lookup(cfg: OmniretConfig) -> EcrLookup:
    m = cfg.model
    if not m.reasoning_from:
        raise ConfigError(f"model.reasoning={m.reasoning} needs model.reasoning_from (ECR files of `omniret reason`)")
    try:
        return EcrLookup(m.reasoning_from, reasoner=m.reasoning_reasoner, template=m.reasoning_template)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _attach(lookup: EcrLookup, sides: Iterable[tuple[Side, str]]) -> tuple[int, int]:
    found = missing = 0
    for side, template in sides:
        side.reasoning = lookup.get(side, template)
        found += side.reasoning is not None
        missing += side.reasoning is None
    return found, missing


def _report(what: str, found: int, missing: int) -> tuple[int, int]:
    if missing:
        log.warning("reasoning: %d of %d %s have no stored ECR and are embedded without one", missing,
                    found + missing, what)
    return found, missing


def template_name(cfg: OmniretConfig, task: str) -> str:
    """The reasoner template the ECR job used for ``task`` (reason.template, or by task group)."""
    return chosen_template(cfg.reason.template, task).name


def _apply(cfg: OmniretConfig, units: Iterable[tuple[str, list[Side], list[Side]]], what: str) -> tuple[int, int]:
    """Give the sides ``model.reasoning`` chooses of each (task, queries, targets) their ECR and clear it
    on the others: the setting is the one authority, whatever ``reasoning`` a pair file carried."""
    which = cfg.model.reasoning
    units = list(units)
    if which == "none":
        for _, queries, targets in units:
            for side in [*queries, *targets]:
                side.reasoning = None
        return 0, 0
    lookup = _lookup(cfg)
    chosen = []
    for task, queries, targets in units:
        template = template_name(cfg, task)
        for sides, on in ((queries, which in ("query", "both")), (targets, which in ("target", "both"))):
            for side in sides:
                if on:
                    chosen.append((side, template))
                else:
                    side.reasoning = None
    return _report(what, *_attach(lookup, chosen))


def attach_to_pairs(cfg: OmniretConfig, pairs: Iterable[Pair]) -> tuple[int, int]:
    """Set ``reasoning`` on the chosen sides of ``pairs``; returns (found, missing)."""
    return _apply(cfg, ((p.task, [p.query], [*p.positives, *p.negatives]) for p in pairs), "training sides")


def attach_to_datasets(cfg: OmniretConfig, datasets: Iterable) -> tuple[int, int]:
    """Set ``reasoning`` on queries and/or candidates of evaluation datasets; returns (found, missing)."""
    return _apply(cfg, ((ds.info.task, list(ds.queries), list(ds.candidates)) for ds in datasets),
                  "evaluation items")
