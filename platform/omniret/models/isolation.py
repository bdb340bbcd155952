"""Embed many items so that any failure stays with its own item.

Each item is built and encoded (tokens + patches) on its own, so an error there (bad media, a
decoder bug, anything) names one item. The encoded items are then embedded together; when that
fails as a whole (an error inside the model, such as a shape mismatch one item causes), every item
is embedded again alone, which finds the culprit and keeps the others. Ingest and evaluation use
this so one bad file or record never costs the rest of a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from omniret.errors import MediaError
from omniret.items import Item

log = logging.getLogger(__name__)


def reason_of(exc: BaseException) -> str:
    """What went wrong, in words: a MediaError's own reason, otherwise the exception's type and text."""
    if isinstance(exc, MediaError):
        return exc.reason
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def embed_isolated(embedder: Any, makers: Sequence[Callable[[], Item]], dimensions: int | None = None,
                   multivector: tuple[int, str] | None = None) -> tuple[np.ndarray, dict[int, Exception]]:
    """Embed the items ``makers`` build; returns (N, D) vectors (zero rows for failures) and the
    exception of each failed item by index. With ``multivector`` = (K, source) the vectors are
    (N, 1 + K, D), as :meth:`~omniret.models.embedder.Embedder.encode_prepared` gives them.

    ``embedder`` is an :class:`~omniret.models.embedder.Embedder`. Only ``Exception`` is caught: an
    interrupt or a dying process still stops the run.
    """
    errors: dict[int, Exception] = {}
    encoded, kept = [], []
    encoder = embedder.encoder
    for i, make in enumerate(makers):
        try:
            encoded.append(encoder.encode(make(), i))
            kept.append(i)
        except Exception as exc:
            errors[i] = exc
    # The size encode_prepared returns: the asked Matryoshka size, the configured one, or the model's.
    dim = (dimensions if dimensions is not None else embedder.embed_cfg.dimensions) or embedder.dim
    rows = () if multivector is None else (1 + multivector[0],)
    out = np.zeros((len(makers), *rows, dim), dtype=np.float32)
    if not encoded:
        return out, errors
    try:
        out[kept] = embedder.encode_prepared(encoded, dimensions, progress=False, multivector=multivector)
    except Exception as exc:
        if len(encoded) == 1:
            errors[kept[0]] = exc
        else:
            log.warning("a batch of %d items failed (%s); embedding them one by one", len(encoded),
                        reason_of(exc))
            for i, enc in zip(kept, encoded, strict=True):
                try:
                    out[i] = embedder.encode_prepared([enc], dimensions, progress=False, multivector=multivector)[0]
                except Exception as one:
                    errors[i] = one
    for i, exc in sorted(errors.items()):
        log.warning("item %d failed: %s", i, reason_of(exc))
    return out, errors
