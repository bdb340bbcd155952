"""The items table: its Arrow schema, its id format, and which columns are heavy.

Ingest writes rows of this schema, the index lifecycle and the search API read them, and serving
returns them; keeping the definition here means a column is added or renamed in one place.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

#: What one row stands for: a whole image, one rendered PDF page, or a video (or a clip of one).
MODALITIES = ("image", "page", "video")

#: Columns that are large per row; searches leave them out unless asked.
VECTOR = "vector"
THUMBNAIL = "thumbnail"
#: K unit vectors per row for MaxSim search; present only in tables made with ``index.multivector``.
MULTIVECTOR = "multivector"
HEAVY_COLUMNS = (VECTOR, THUMBNAIL, MULTIVECTOR)

#: Schema metadata keys: which model's vectors the table holds, so a mismatched ingest is refused.
META_MODEL = b"omniret.model"
META_VERSION = b"omniret.schema"
SCHEMA_VERSION = b"1"
#: "K:source" of the multivector column (omniret.models.multivector), so queries are read out alike.
META_MULTIVECTOR = b"omniret.multivector"

TIMESTAMP = pa.timestamp("us", tz="UTC")


def items_schema(dim: int, model: str, multivector: tuple[int, str] | None = None) -> pa.Schema:
    """Schema of the items table for vectors of ``dim`` floats made by ``model``; with ``multivector``
    = (K, source), also a column of K vectors of ``dim`` floats per row."""
    if dim < 1:
        raise ValueError(f"vector dimension must be positive, got {dim}")
    metadata = {META_MODEL: model.encode(), META_VERSION: SCHEMA_VERSION}
    extra = []
    if multivector is not None:
        k, source = multivector
        if k < 1:
            raise ValueError(f"vectors per item must be >= 1, got {k}")
        # LanceDB's multivector type: a list of fixed-size vectors (K is kept in the metadata).
        extra.append(pa.field(MULTIVECTOR, pa.list_(pa.list_(pa.float32(), dim))))
        metadata[META_MULTIVECTOR] = f"{k}:{source}".encode()
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),  # content hash + unit, see item_id()
            pa.field("source_uri", pa.string(), nullable=False),  # absolute path or scheme://... URI
            pa.field("sha256", pa.string(), nullable=False),  # of the whole source file
            pa.field("modality", pa.string(), nullable=False),  # one of MODALITIES
            pa.field("page", pa.int32()),  # 0-based PDF page; null otherwise
            pa.field("t_start", pa.float64()),  # seconds; videos and clips only
            pa.field("t_end", pa.float64()),
            pa.field("text", pa.string()),  # extracted text (PDF pages); the full-text index covers it
            pa.field(THUMBNAIL, pa.binary()),  # small JPEG for result lists
            pa.field(VECTOR, pa.list_(pa.float32(), dim)),  # unit length: cosine = dot product
            pa.field("model", pa.string(), nullable=False),
            pa.field("created_at", TIMESTAMP, nullable=False),
            *extra,
        ],
        metadata=metadata,
    )


#: Every column except the heavy ones: what a search returns by default.
LIGHT_COLUMNS = tuple(f.name for f in items_schema(1, "-") if f.name not in HEAVY_COLUMNS)


def errors_schema() -> pa.Schema:
    """Schema of the errors table: one row per file (``unit`` "") or per page/clip that failed."""
    return pa.schema(
        [
            pa.field("uri", pa.string(), nullable=False),
            pa.field("unit", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),  # read, classify, probe, decode, embed, write
            pa.field("reason", pa.string(), nullable=False),
            pa.field("created_at", TIMESTAMP, nullable=False),
        ]
    )


def unit_key(modality: str, page: int | None = None, t_start: float | None = None,
             t_end: float | None = None) -> str:
    """Which part of a file a row is: ``image``, ``page=3``, ``video`` or ``clip=4.000-8.000``."""
    if modality == "image":
        return "image"
    if modality == "page":
        if page is None or page < 0:
            raise ValueError("a page unit needs a page index >= 0")
        return f"page={page}"
    if modality == "video":
        if t_start is None or t_end is None:
            return "video"
        # Millisecond precision: clip bounds come from arithmetic on the clip length.
        return f"clip={t_start:.3f}-{t_end:.3f}"
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def item_id(sha256: str, unit: str) -> str:
    """Row id: the file's content hash and the unit, so the same bytes always give the same id.

    Re-ingesting unchanged files finds their ids already present (nothing is re-embedded); a
    changed file hashes differently and gets new ids.
    """
    if len(sha256) != 64:
        raise ValueError(f"expected a hex sha256 digest, got {sha256!r}")
    return f"{sha256}:{unit}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_of(schema: pa.Schema) -> str | None:
    """The model recorded in a table's schema metadata (None for tables made elsewhere)."""
    value = (schema.metadata or {}).get(META_MODEL)
    return value.decode() if value is not None else None


def vector_dim(schema: pa.Schema) -> int:
    return schema.field(VECTOR).type.list_size


def multivector_of(schema: pa.Schema) -> tuple[int, str] | None:
    """(K, source) of a table's multivector column; None when it has none."""
    if MULTIVECTOR not in schema.names:
        return None
    value = (schema.metadata or {}).get(META_MULTIVECTOR, b"")
    k, _, source = value.decode().partition(":")
    if not k.isdigit():
        raise ValueError(f"the {MULTIVECTOR!r} column does not record its vectors per item ({value!r})")
    return int(k), source
