"""Which stored rows are stale after a run: replaced content and (with prune) vanished files.

Rows are only ever removed after their replacement is stored: a file's old rows go once its
current content is fully in the table, so a crash at any point leaves either the old rows or the
new ones (or both, until the next run), never neither. Ids are content hashes, so when content
that is still present under another path loses its own path, its rows are re-pointed there
instead of being deleted and embedded again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from omniret.ingest.discover import Scope


@dataclass
class ReconcilePlan:
    delete_ids: list[str] = field(default_factory=list)
    repoint: dict[str, str] = field(default_factory=dict)  # sha256 -> the source_uri that now has it
    stale_uris: set[str] = field(default_factory=set)  # current files whose old content is replaced
    vanished_uris: set[str] = field(default_factory=set)  # files gone from the sources (prune)


def plan_reconcile(stored: pa.Table, current: Mapping[str, str | None], complete: set[str],
                   scopes: Sequence[Scope] | None = None) -> ReconcilePlan:
    """Plan the removal of stale rows.

    ``stored``: the table's (id, source_uri, sha256) rows. ``current``: every file seen in this run
    -> its sha256 (None when it could not be read). ``complete``: files whose every item is now
    stored. ``scopes``: when pruning, what the sources cover (rows of vanished files inside them
    are stale); None leaves rows of unseen files alone.
    """
    plan = ReconcilePlan()
    owner: dict[str, str] = {}
    for uri in sorted(complete):
        sha = current.get(uri)
        if sha is not None:
            owner.setdefault(sha, uri)
    for row in stored.select(["id", "source_uri", "sha256"]).to_pylist():
        uri, sha = row["source_uri"], row["sha256"]
        if uri in current:
            now = current[uri]
            if now is None or now == sha or uri not in complete:
                continue  # unreadable now, unchanged, or its new content is not all stored yet
            plan.stale_uris.add(uri)
        elif scopes is not None and any(scope.covers(uri) for scope in scopes):
            plan.vanished_uris.add(uri)
        else:
            continue
        if sha in owner and owner[sha] != uri:
            plan.repoint[sha] = owner[sha]
        else:
            plan.delete_ids.append(row["id"])
    return plan
