"""The ingest run: discover files, run the Ray Data graph, then reconcile and index the table.

Graph: file list -> ``expand_files`` (CPU tasks: read, hash, classify, skip stored ids, decode)
-> ``EmbedBatch`` (actor pool, one model each) -> ``WriteBatch`` (a few writer actors, large
``merge_insert`` commits) -> small result rows streamed back to the driver, which counts them.
After the graph: the errors table, stale and (with prune) vanished rows, duplicate repair, and
index maintenance. Every step is safe to repeat, so an interrupted run is finished by running it
again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omniret.cluster import ensure_ray
from omniret.config import OmniretConfig
from omniret.errors import ConfigError
from omniret.ingest.discover import Discovery, SourceFile, discover
from omniret.ingest.embed import EmbedBatch, model_dim, model_tag, multivector_spec
from omniret.ingest.expand import expand_files
from omniret.ingest.reconcile import plan_reconcile
from omniret.ingest.summary import IngestSummary
from omniret.ingest.write import WriteBatch

if TYPE_CHECKING:
    from omniret.index.store import IndexStore

log = logging.getLogger(__name__)

#: Upper bound on input blocks: enough for parallel decoding, few enough to schedule cheaply.
MAX_INPUT_BLOCKS = 4096


def build_dataset(files: Sequence[SourceFile], cfg: OmniretConfig, model: str) -> Any:
    """The Ray Data graph over ``files``; iterate it to run it."""
    import ray

    ing = cfg.ingest
    blocks = max(1, min(math.ceil(len(files) / ing.files_per_task), MAX_INPUT_BLOCKS))
    ds = ray.data.from_items([{"uri": f.uri, "size": f.size} for f in files], override_num_blocks=blocks)
    ds = ds.map_batches(
        expand_files, batch_size=ing.files_per_task, batch_format="pyarrow",
        fn_kwargs={"media": cfg.media.model_dump(), "index": cfg.index.model_dump(),
                   "thumbnail_px": ing.thumbnail_px, "isolate": ing.isolate_decoding},
        # The memory reservation also differs from the embedder's resources, which keeps Ray Data
        # from fusing decoding into the embedder actors: decoding should run beside the model.
        num_cpus=1, memory=ing.decode_memory_mb * 2**20)
    ds = ds.map_batches(
        EmbedBatch, batch_size=ing.embed_batch_rows, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=ing.embed_actors),
        fn_constructor_kwargs={"config": cfg.model_dump(), "model": model},
        num_cpus=ing.embed_cpus, num_gpus=ing.embed_gpus or None)
    return ds.map_batches(
        WriteBatch, batch_size=ing.write_batch_rows, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=ing.writers),
        fn_constructor_kwargs={"index": cfg.index.model_dump()},
        num_cpus=0)  # writers wait on storage, not on CPU


def run_ingest(cfg: OmniretConfig, sources: Sequence[str] | None = None, *, prune: bool | None = None
               ) -> IngestSummary:
    """Ingest ``sources`` (default ``ingest.sources``) into ``index.table``; returns the summary."""
    started = time.perf_counter()
    cfg = _pin_paths(cfg)
    sources = list(sources or cfg.ingest.sources)
    if not sources:
        raise ConfigError("nothing to ingest: give sources (--source or ingest.sources)")
    prune = cfg.ingest.prune if prune is None else prune
    found = discover(sources, include_hidden=cfg.ingest.include_hidden)
    log.info("found %d files in %d sources (%d sources unusable)", len(found.files), len(sources),
             len(found.errors))
    summary = IngestSummary(files_seen=len(found.files))
    for source, reason in found.errors:
        summary.add_error(source, "discover", reason)
    if found.files:
        # Ray first: LanceDB, once loaded, warns about every process Ray forks while starting.
        ensure_ray(cfg.ingest.ray_num_cpus)
    from omniret.index.store import IndexStore

    store = IndexStore(cfg.index, fresh=True)
    model = model_tag(cfg)
    store.create(model_dim(cfg), model, multivector_spec(cfg))  # before any work: a table of another model fails here
    if found.files:
        _stream(build_dataset(found.files, cfg, model), summary, cfg.ingest.max_failed_files)
    finish(store, found, summary, prune=prune)
    summary.seconds = time.perf_counter() - started
    return summary


def _pin_paths(cfg: OmniretConfig) -> OmniretConfig:
    """A copy with the checkpoint and a local index as absolute paths: Ray workers may run
    elsewhere than the driver's working directory (and the tiny model is built here, once)."""
    from omniret.models.backbone import checkpoint_path

    cfg = cfg.model_copy(deep=True)
    cfg.model.path = str(checkpoint_path(cfg.model).resolve())
    if "://" not in cfg.index.uri:
        cfg.index.uri = os.path.abspath(cfg.index.uri)
    return cfg


def _stream(ds: Any, summary: IngestSummary, max_failed_files: int | None) -> None:
    """Run the graph, counting results as they arrive; stop once too many files have failed."""
    batches = ds.iter_batches(batch_format="pyarrow", batch_size=None)
    for batch in batches:
        summary.add(batch)
        if max_failed_files is not None and len(summary.failed_files) > max_failed_files:
            summary.stopped = (f"{len(summary.failed_files)} files failed, more than "
                               f"ingest.max_failed_files={max_failed_files}")
            break
    close = getattr(batches, "close", None)
    if close is not None:
        close()  # stops the streaming executor when the loop ended early


def finish(store: IndexStore, found: Discovery, summary: IngestSummary, *, prune: bool) -> None:
    """After the graph: record errors, drop stale rows, repair duplicates, maintain indexes."""
    current = {f.uri: summary.file_sha.get(f.uri) for f in found.files}
    if summary.stopped:
        prune = False  # files not reached yet would look vanished
    plan = plan_reconcile(store.scan(), current, summary.complete_files, found.scopes if prune else None)
    # Errors of the files this run looked at (and of vanished ones) are replaced by this run's.
    looked_at = set(summary.file_sha) | {e["uri"] for e in summary.errors} | plan.vanished_uris
    store.replace_errors(looked_at, summary.errors)
    for sha, uri in plan.repoint.items():
        store.repoint(sha, uri)
    summary.stale_removed = store.delete_ids(plan.delete_ids)
    summary.repointed = len(plan.repoint)
    summary.pruned = len(plan.vanished_uris)
    summary.duplicates_removed = store.drop_duplicates()
    summary.index_actions = store.maintain()
    summary.table_rows = store.count()
