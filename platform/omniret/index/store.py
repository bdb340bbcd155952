"""The LanceDB store: open/create the items table, upsert, delete, index lifecycle, search.

Ingest writes through :meth:`IndexStore.upsert` (``merge_insert`` on ``id``, so a row written twice
is still one row); serving reads through :meth:`IndexStore.search` and :meth:`IndexStore.get`,
which leave the heavy columns (vector, thumbnail) out unless asked. Indexes follow the table's
size: scalar and full-text indexes as soon as it has rows, a vector index only above
``index.vector_index_min_rows`` (flat search is exact and fast enough below), and ``optimize``
once the unindexed rows pass ``index.reindex_fraction``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, Bitmap, BTree, HnswSq, IvfPq, IvfSq

from omniret.config import IndexConfig
from omniret.errors import OmniretError
from omniret.index.schema import (
    HEAVY_COLUMNS,
    LIGHT_COLUMNS,
    MODALITIES,
    MULTIVECTOR,
    THUMBNAIL,
    TIMESTAMP,
    VECTOR,
    errors_schema,
    items_schema,
    model_of,
    multivector_of,
    vector_dim,
)

log = logging.getLogger(__name__)

#: Ids per ``IN (...)`` predicate: long enough to be few queries, short enough to parse quickly.
IN_CHUNK = 1000
#: Below this many rows PQ cannot train its 256 centroids per sub-vector.
MIN_VECTOR_INDEX_ROWS = 256
#: Scalar/full-text indexes kept on every non-empty table: column -> (config factory, label).
SCALAR_INDEXES = {"id": (BTree, "btree"), "modality": (Bitmap, "bitmap"), "text": (FTS, "fts")}

Hit = dict[str, Any]


class StoreError(OmniretError):
    """The table is missing, holds another model's vectors, or a query cannot be answered."""


def sql_str(value: str) -> str:
    """A SQL string literal (single quotes doubled), for filters built from data."""
    return "'" + str(value).replace("'", "''") + "'"


def in_list(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"


def chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def build_filter(modality: str | Sequence[str] | None = None, source_prefix: str | None = None,
                 where: str | None = None) -> str | None:
    """AND together a modality filter, a source-URI prefix and a raw SQL predicate."""
    parts = []
    if modality:
        wanted = [modality] if isinstance(modality, str) else list(modality)
        unknown = sorted(set(wanted) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modality {unknown}; expected some of {list(MODALITIES)}")
        parts.append(in_list("modality", wanted))
    if source_prefix:
        parts.append(f"starts_with(source_uri, {sql_str(source_prefix)})")
    if where:
        parts.append(f"({where})")
    return " AND ".join(parts) or None


class IndexStore:
    """One LanceDB database with the items table and the ingest errors table.

    ``fresh`` makes every read see the latest commit (ingest needs that); otherwise readers (serving
    replicas in other processes) check for new commits every ``index.read_consistency_s``.
    """

    def __init__(self, cfg: IndexConfig, *, fresh: bool = False):
        self.cfg = cfg
        seconds = 0.0 if fresh else cfg.read_consistency_s
        interval = dt.timedelta(seconds=seconds) if seconds is not None else None
        self.db = lancedb.connect(cfg.uri, read_consistency_interval=interval,
                                  storage_options=cfg.storage_options or None)
        self._table: Any = None

    # ---- tables ------------------------------------------------------------------------------
    def exists(self) -> bool:
        if self._table is None:
            self._table = self._open(self.cfg.table)  # kept open: it follows new commits by itself
        return self._table is not None

    @property
    def table(self) -> Any:
        """The items table; :class:`StoreError` if nothing has been ingested into it yet."""
        if not self.exists():
            raise StoreError(f"no table {self.cfg.table!r} in {self.cfg.uri}: ingest something first")
        return self._table

    def _open(self, name: str) -> Any:
        try:
            return self.db.open_table(name)
        except ValueError:  # "Table ... was not found"
            return None

    def create(self, dim: int, model: str, multivector: tuple[int, str] | None = None) -> Any:
        """Open the items table, creating it empty if missing; refuse one made for another model, or
        one whose multivector column (K vectors of ``multivector`` = (K, source)) differs."""
        table = self._open(self.cfg.table)
        if table is None:
            try:
                table = self.db.create_table(self.cfg.table, schema=items_schema(dim, model, multivector))
            except ValueError:
                table = self._open(self.cfg.table)  # created concurrently by another process
                if table is None:
                    raise
        self._check(table, dim, model)
        have = multivector_of(table.schema)
        if have != (tuple(multivector) if multivector else None):
            def words(mv: tuple[int, str] | None) -> str:
                return f"{mv[0]} vectors per row ({mv[1]})" if mv else "no such column"

            raise StoreError(
                f"table {self.cfg.table!r} in {self.cfg.uri}: column {MULTIVECTOR!r} has {words(have)}, this "
                f"ingest writes {words(multivector)}: match index.multivector / multivector_k / "
                "multivector_source to the table, or use another index.table")
        self._table = table
        return table

    def _check(self, table: Any, dim: int, model: str) -> None:
        have_model, have_dim = model_of(table.schema), vector_dim(table.schema)
        if have_dim != dim or (have_model is not None and have_model != model):
            raise StoreError(
                f"table {self.cfg.table!r} in {self.cfg.uri} holds {have_dim}-d vectors of model "
                f"{have_model!r}, not {dim}-d vectors of {model!r}: use another index.table (vectors of "
                "different models cannot be compared)")

    def count(self, where: str | None = None) -> int:
        return self.table.count_rows(where) if self.exists() else 0

    # ---- writes ------------------------------------------------------------------------------
    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are in the table already (an empty set if there is no table yet)."""
        if not ids or not self.exists():
            return set()
        table, found = self._table, set()
        for part in chunks(sorted(set(ids))):
            rows = table.search().where(in_list("id", part)).select(["id"]).limit(None).to_arrow()
            found.update(rows["id"].to_pylist())
        return found

    def upsert(self, rows: pa.Table, *, attempts: int = 5) -> tuple[int, int]:
        """Insert or replace ``rows`` by id; returns (inserted, updated).

        Rows are deduplicated by id first (merge_insert would insert both copies of a new id), and
        a commit that loses a race with another writer is retried with backoff.
        """
        if rows.num_rows == 0:
            return 0, 0
        table = self.table
        rows = dedupe_by_id(rows).select(table.schema.names).cast(table.schema)
        for attempt in range(attempts):
            try:
                result = (table.merge_insert("id").when_matched_update_all()
                          .when_not_matched_insert_all().execute(rows))
                return result.num_inserted_rows, result.num_updated_rows
            except (OSError, RuntimeError, ValueError) as exc:
                retryable = "conflict" in str(exc).lower() or isinstance(exc, OSError)
                if not retryable or attempt == attempts - 1:
                    raise
                log.warning("commit failed (%s); retrying", exc)
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def delete_ids(self, ids: Sequence[str]) -> int:
        if not ids or not self.exists():
            return 0
        before = self.table.count_rows()
        for part in chunks(sorted(set(ids))):
            self.table.delete(in_list("id", part))
        return before - self.table.count_rows()

    def repoint(self, sha256: str, source_uri: str) -> None:
        """Rows of the content ``sha256`` now belong to ``source_uri`` (its old path is gone)."""
        self.table.update(where=f"sha256 = {sql_str(sha256)}", values={"source_uri": source_uri})

    def scan(self, columns: Sequence[str] = ("id", "source_uri", "sha256"), where: str | None = None
             ) -> pa.Table:
        """The given (light) columns of every row matching ``where``."""
        if not self.exists():
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        query = self.table.search()
        if where:
            query = query.where(where)
        return query.select(list(columns)).limit(None).to_arrow()

    def drop_duplicates(self) -> int:
        """Keep one row per id (the newest); returns how many rows were removed.

        Concurrent writers that insert the same new id each add a row (merge_insert matches only
        committed rows). The extra rows are removed by a single delete of the older copies, named
        by id and row address: the row that stays is never touched, so an interrupted or concurrent
        repair can leave a duplicate for the next one but never loses an id. Row addresses are
        (fragment, offset) of immutable fragments whose ids are never reused, so an address read
        before another process compacted or updated the table matches no row afterwards (nothing
        is deleted) rather than another row.
        """
        ids = self.scan(["id"])["id"]
        counts = pc.value_counts(ids)
        dup = [v["values"] for v in counts.to_pylist() if v["counts"] > 1]
        if not dup:
            return 0
        removed = 0
        for part in chunks(dup):
            where = in_list("id", part)
            rows = (self.table.search().where(where).select(["id", "created_at"]).with_row_id(True)
                    .limit(None).to_arrow())
            older = older_copies(rows)
            if older:
                before = self.table.count_rows(where)
                self.table.delete(f"{where} AND _rowid IN ({', '.join(map(str, older))})")
                removed += before - self.table.count_rows(where)
        return removed

    # ---- errors ------------------------------------------------------------------------------
    def replace_errors(self, uris: Iterable[str], errors: Sequence[dict[str, str]]) -> None:
        """Forget earlier errors of ``uris`` and record ``errors`` (dicts: uri, unit, stage, reason)."""
        uris = set(uris)
        table = self._open(self.cfg.errors_table)
        if table is not None and uris:
            old = set(table.search().select(["uri"]).limit(None).to_arrow()["uri"].to_pylist())
            for part in chunks(sorted(old & uris)):
                table.delete(in_list("uri", part))
        if not errors:
            return
        now = dt.datetime.now(dt.timezone.utc)
        data = pa.table({
            "uri": [e["uri"] for e in errors], "unit": [e.get("unit") or "" for e in errors],
            "stage": [e["stage"] for e in errors], "reason": [e["reason"] for e in errors],
            "created_at": pa.array([now] * len(errors), TIMESTAMP)}, schema=errors_schema())
        if table is None:
            try:
                self.db.create_table(self.cfg.errors_table, data=data)
                return
            except ValueError:
                table = self._open(self.cfg.errors_table)
                if table is None:
                    raise
        table.add(data)

    def errors(self) -> pa.Table:
        """The recorded ingest errors (uri, unit, stage, reason, created_at)."""
        table = self._open(self.cfg.errors_table)
        return errors_schema().empty_table() if table is None else table.to_arrow()

    # ---- index lifecycle ---------------------------------------------------------------------
    def index_status(self) -> dict[str, Any]:
        """Row count and, per index, its type and how many rows it does not cover yet."""
        if not self.exists():
            return {"rows": 0, "indexes": []}
        indexes = [{"name": ix.name, "type": str(ix.index_type), "columns": list(ix.columns),
                    "indexed_rows": ix.num_indexed_rows, "unindexed_rows": ix.num_unindexed_rows}
                   for ix in self.table.list_indices()]
        return {"rows": self.table.count_rows(), "indexes": indexes}

    def maintain(self, *, rebuild_vector: bool = False, optimize: bool = False) -> list[str]:
        """Create missing indexes, the vector index once the table is large enough, and optimize
        when too many rows are unindexed. Returns what was done, in words."""
        if not self.exists():
            return []
        table = self.table
        rows = table.count_rows()
        if rows == 0:
            return []  # indexes cannot be trained on an empty table
        done = []
        present = {ix.columns[0]: ix for ix in table.list_indices()}
        for column, (config, label) in SCALAR_INDEXES.items():
            if column not in present:
                table.create_index(column, config=config())
                done.append(f"created {label} index on {column}")
        # The multivector column gets an index of its own, by the same rule (LanceDB's IVF indexes
        # take multivector columns; a query's vectors are each searched, then MaxSim re-ranks).
        for column in [VECTOR] + ([MULTIVECTOR] if MULTIVECTOR in table.schema.names else []):
            if not (rebuild_vector or (column not in present and rows >= self.cfg.vector_index_min_rows)):
                continue
            if rows < MIN_VECTOR_INDEX_ROWS:
                done.append(f"no {column} index: {rows} rows, at least {MIN_VECTOR_INDEX_ROWS} needed")
            else:
                config = self.vector_index_config(rows)
                table.create_index(column, config=config, replace=True)
                done.append(f"built {type(config).__name__} {column} index over {rows} rows")
        stale = self._unindexed_fraction()  # indexes created just now cover every row
        if optimize or stale > self.cfg.reindex_fraction:
            table.optimize()
            done.append(f"optimized (compaction + index update; {stale:.0%} rows were unindexed)")
        return done

    def _unindexed_fraction(self) -> float:
        rows = self.table.count_rows()
        worst = max((ix.num_unindexed_rows for ix in self.table.list_indices()), default=0)
        return worst / rows if rows else 0.0

    def vector_index_config(self, rows: int) -> IvfPq | IvfSq | HnswSq:
        dim = vector_dim(self.table.schema)
        if self.cfg.vector_index == "hnsw_sq":
            parts = self.cfg.num_partitions or max(1, rows // 1_048_576)
            return HnswSq(distance_type="cosine", num_partitions=parts)
        parts = self.cfg.num_partitions or max(1, rows // 4096)
        if self.cfg.vector_index == "ivf_sq":
            return IvfSq(distance_type="cosine", num_partitions=parts)
        return IvfPq(distance_type="cosine", num_partitions=parts,
                     num_sub_vectors=self.cfg.num_sub_vectors or sub_vectors(dim))

    # ---- reads -------------------------------------------------------------------------------
    def search(self, vector: Sequence[float] | np.ndarray | None = None, text: str | None = None, *,
               multivector: np.ndarray | Sequence[Sequence[float]] | None = None, k: int = 10, modality: str | Sequence[str] | None = None, source_prefix: str | None = None,
               where: str | None = None, with_vector: bool = False, with_thumbnail: bool = False,
               exact: bool = False, nprobes: int | None = None, refine_factor: int | None = None,
               candidates: int | None = None) -> list[Hit]:
        """The ``k`` best rows for a query vector, a text query, or both (hybrid).

        - vector only: cosine similarity, ``score`` = 1 - cosine distance (1 is identical);
          ``exact`` bypasses the ANN index (ground truth).
        - text only: BM25 full-text search over ``text``, ``score`` = BM25 score.
        - both: vector and full-text results fused by reciprocal rank (RRF), ``score`` = RRF score;
          each half contributes its best ``candidates`` rows (default max(4k, 40)), so a row ranked
          well by one half and modestly by the other still gets both contributions.
        - ``multivector`` (K, D) instead of ``vector``: MaxSim over the ``multivector`` column,
          ``score`` = sum over the K query vectors of their best cosine with the row's vectors
          (at most K); with ``text`` it takes the vector half's place in hybrid search. The table
          must have the column, with K vectors per row of D dimensions.

        Filters (``modality``, ``source_prefix``, raw SQL ``where``) apply before ranking. Rows come
        as dicts of the light columns plus ``score``; ``vector`` (and ``multivector``) and ``thumbnail``
        only when asked.
        """
        if vector is not None and multivector is not None:
            raise ValueError("search takes a query vector or a multivector query, not both")
        if vector is None and multivector is None and not text:
            raise ValueError("search needs a query vector, a text query, or both")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        flt = build_filter(modality, source_prefix, where)
        if not self.exists():
            return []
        columns = self._columns(with_vector, with_thumbnail)
        if text:
            self._require_fts()
        column = VECTOR
        if vector is not None:
            vector = self._query_vector(vector)
        elif multivector is not None:
            vector, column = self._query_multivector(multivector), MULTIVECTOR
        if vector is not None and text:
            # The two halves run as separate queries (each can then project its own score column
            # and take the ANN knobs) and are fused with LanceDB's RRF reranker, as its hybrid
            # query does.
            from lancedb.rerankers import RRFReranker

            pool = max(candidates or max(4 * k, 40), k)
            vec = self._vector_query(vector, flt, [*columns, "_distance"], pool, exact, nprobes, refine_factor,
                                     column)
            fts = self._text_query(text, flt, [*columns, "_score"], pool)
            fused = RRFReranker().rerank_hybrid(text, vec.with_row_id(True).to_arrow(),
                                                fts.with_row_id(True).to_arrow())
            return _hits(fused.slice(0, k), "_relevance_score")
        if vector is not None:
            query = self._vector_query(vector, flt, [*columns, "_distance"], k, exact, nprobes, refine_factor,
                                       column)
            # Multivector distance is sum_i (1 - max_j cos): K - MaxSim.
            return _hits(query.to_arrow(), "_distance", len(vector) if vector.ndim == 2 else 1)
        return _hits(self._text_query(text, flt, [*columns, "_score"], k).to_arrow(), "_score")

    def _vector_query(self, vector: np.ndarray, flt: str | None, columns: list[str], k: int, exact: bool,
                      nprobes: int | None, refine_factor: int | None, column: str = VECTOR) -> Any:
        query = self.table.search(vector, vector_column_name=column).distance_type("cosine")
        if exact:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(nprobes or self.cfg.nprobes)
            refine = self.cfg.refine_factor if refine_factor is None else refine_factor  # 0: off
            query = query.refine_factor(refine) if refine else query
        if flt:
            query = query.where(flt, prefilter=True)
        return query.select(columns).limit(k)

    def _text_query(self, text: str, flt: str | None, columns: list[str], k: int) -> Any:
        query = self.table.search(text, query_type="fts", fts_columns="text")
        if flt:
            query = query.where(flt, prefilter=True)
        return query.select(columns).limit(k)

    def get(self, ids: Sequence[str], *, with_vector: bool = False, with_thumbnail: bool = True) -> list[Hit]:
        """Rows by id, in the order asked (ids not in the table are left out)."""
        if not ids or not self.exists():
            return []
        columns = self._columns(with_vector, with_thumbnail)
        found: dict[str, Hit] = {}
        for part in chunks(list(dict.fromkeys(ids))):
            rows = self.table.search().where(in_list("id", part)).select(columns).limit(None).to_arrow()
            found.update((row["id"], row) for row in rows.to_pylist())
        return [found[i] for i in ids if i in found]

    def _columns(self, with_vector: bool, with_thumbnail: bool) -> list[str]:
        columns = list(LIGHT_COLUMNS)
        if with_thumbnail:
            columns.append(THUMBNAIL)
        if with_vector:  # the token vectors too, where the table has them
            columns += [c for c in (VECTOR, MULTIVECTOR) if c in self.table.schema.names]
        return columns

    def _query_vector(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
        dim = vector_dim(self.table.schema)
        if array.shape[0] != dim:
            raise ValueError(f"query vector has {array.shape[0]} dimensions, the index holds {dim}")
        return array

    def _query_multivector(self, vectors: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        array = np.asarray(vectors, dtype=np.float32)
        have = multivector_of(self.table.schema)
        if have is None:
            raise StoreError(f"table {self.cfg.table!r} in {self.cfg.uri} has no {MULTIVECTOR!r} column: "
                             "ingest with index.multivector=tokens (into a new index.table) to search it")
        dim = vector_dim(self.table.schema)
        if array.ndim != 2 or array.shape != (have[0], dim):
            raise StoreError(f"a query of the {MULTIVECTOR!r} column must be {have[0]} vectors of {dim} "
                             f"dimensions ({have[1]} read-out), got shape {tuple(array.shape)}")
        return array

    def _require_fts(self) -> None:
        if not any(ix.columns == ["text"] for ix in self.table.list_indices()):
            raise StoreError(f"table {self.cfg.table!r} has no full-text index yet: run `omniret index`")


def dedupe_by_id(rows: pa.Table) -> pa.Table:
    """Keep the first row of each id."""
    first: dict[str, int] = {}
    for position, value in enumerate(rows["id"].to_pylist()):
        first.setdefault(value, position)
    return rows if len(first) == rows.num_rows else rows.take(sorted(first.values()))


def older_copies(rows: pa.Table) -> list[int]:
    """Row addresses (``_rowid``) of every row but the newest of each id (ties: the highest address,
    so that concurrent repairs reading the same rows choose the same survivor)."""
    best: dict[str, tuple[Any, int]] = {}
    for row in rows.select(["id", "created_at", "_rowid"]).to_pylist():
        rank = (row["created_at"], row["_rowid"])
        if row["id"] not in best or rank > best[row["id"]]:
            best[row["id"]] = rank
    keep = {rank[1] for rank in best.values()}
    return sorted(r for r in rows["_rowid"].to_pylist() if r not in keep)


def sub_vectors(dim: int) -> int:
    """PQ sub-vectors: 2 dimensions each up to 128-d vectors, 4 up to 512-d, else 8 (LanceDB's dim/8).

    Small (e.g. Matryoshka-truncated) vectors need finer codes: at 64 dimensions and 1M rows, dim/8
    sub-vectors found a third of the true top-10 even with refinement, dim/2 nearly all of them
    (docs/BENCHMARKS.md). The result always divides ``dim``, as PQ requires.
    """
    per = 2 if dim <= 128 else 4 if dim <= 512 else 8
    target = max(1, dim // per)
    return max(d for d in range(1, target + 1) if dim % d == 0)


def _hits(result: pa.Table, score: str, vectors: int = 1) -> list[Hit]:
    scores = result[score].to_numpy(zero_copy_only=False).astype(float)
    if score == "_distance":
        scores = vectors - scores  # cosine distance -> cosine similarity (summed over query vectors)
    keep = [c for c in result.column_names if not c.startswith("_")]
    hits = result.select(keep).to_pylist()
    for hit, value in zip(hits, scores, strict=True):
        hit["score"] = float(value)
        for column in (VECTOR, MULTIVECTOR):
            if column in hit and hit[column] is not None:
                hit[column] = np.asarray(hit[column], dtype=np.float32)
    return hits


__all__ = ["HEAVY_COLUMNS", "LIGHT_COLUMNS", "Hit", "IndexStore", "StoreError", "build_filter", "sql_str"]
