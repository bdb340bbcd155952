"""Quantised embedding formats served by ``/v1/embeddings`` and decoded by the client: int8 and packed binary.

int8: ``round(x * 127 / max_i |x_i|)``, a symmetric scale chosen per vector. Cosine similarity, the
only similarity omniret uses, does not change when a vector is scaled, so int8 vectors compare with each
other (and with float vectors) directly and no scale has to travel with them. A per-vector scale uses all
255 levels whatever the dimension; a fixed scale of 1/127 on a unit vector would not: with D = 2048 a
typical component is about 1/sqrt(D) = 0.022, i.e. about 3 steps of 1/127. The LSQ step of
quantisation-aware training (losses/quantize.py) lives in the training state, not in the checkpoint, and a
per-vector grid is at least as fine as the one training learns, so serving does not need it.

binary: one bit per dimension, 1 where ``x >= 0`` (the training quantiser's sign, 0 counting as +1),
packed 8 to a byte by ``np.packbits`` in big-endian bit order (dimension 0 is the most significant bit of
byte 0); the last byte is zero-padded. Hamming distance on the bits is a monotone function of the cosine of
the +-1 vectors.
"""

from __future__ import annotations

import numpy as np


def to_int8(vectors: np.ndarray) -> np.ndarray:
    """(N, D) floats -> (N, D) int8 in [-127, 127], scaled per row so its largest |component| is 127."""
    x = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    scale = np.where(peak > 0, 127.0 / np.where(peak > 0, peak, 1.0), 0.0)
    return np.clip(np.rint(x * scale), -127, 127).astype(np.int8)


def pack_binary(vectors: np.ndarray) -> np.ndarray:
    """(N, D) floats -> (N, ceil(D / 8)) uint8: bit 1 where the component is >= 0, big-endian bit order."""
    return np.packbits(np.asarray(vectors) >= 0, axis=-1, bitorder="big")


def unpack_binary(packed: np.ndarray, dim: int) -> np.ndarray:
    """The inverse of :func:`pack_binary`: (N, ceil(D / 8)) uint8 -> (N, D) float32 of +-1."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=dim, bitorder="big")
    return bits.astype(np.float32) * 2 - 1
