"""Helpers shared by the serving tests: a small indexed corpus and data: URIs."""

from __future__ import annotations

import base64
import datetime as dt
import io
import struct
from pathlib import Path

import pyarrow as pa
from PIL import Image

from omniret.config import OmniretConfig
from omniret.index.schema import item_id, items_schema, sha256_bytes
from omniret.index.store import IndexStore
from omniret.items import Item
from omniret.media import synth

SCENES = [("circle", "red"), ("square", "blue"), ("triangle", "green"), ("circle", "yellow")]


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def build_index(cfg: OmniretConfig, embedder, folder: Path) -> dict[str, str]:
    """Write SCENES as image files, embed and index them; returns {file name: row id}."""
    folder.mkdir(parents=True, exist_ok=True)
    records, ids = [], {}
    for shape, color in SCENES:
        path = folder / f"{color}_{shape}.png"
        synth.draw_scene([{"shape": shape, "color": color, "x": 56, "y": 56, "size": 60}], size=(112, 112)).save(path)
        data = path.read_bytes()
        digest = sha256_bytes(data)
        thumb = io.BytesIO()
        Image.open(path).convert("RGB").save(thumb, format="JPEG")
        vector = embedder.encode([Item(images=[str(path)])], progress=False)[0]
        ids[path.name] = item_id(digest, "image")
        records.append({"id": ids[path.name], "source_uri": str(path), "sha256": digest, "modality": "image",
                        "page": None, "t_start": None, "t_end": None, "text": f"a {color} {shape}",
                        "thumbnail": thumb.getvalue(), "vector": vector.tolist(), "model": embedder.model_id,
                        "created_at": dt.datetime.now(dt.timezone.utc)})
    store = IndexStore(cfg.index, fresh=True)
    store.create(len(records[0]["vector"]), embedder.model_id)
    store.upsert(pa.Table.from_pylist(records, schema=items_schema(len(records[0]["vector"]), embedder.model_id)))
    store.maintain()
    return ids


def forge_mp4(data: bytes, *, size: tuple[int, int] | None = None, timescale_factor: int | None = None) -> bytes:
    """An MP4 whose header lies: every track and visual sample entry declares ``size``, and/or the
    media timescale is multiplied by ``timescale_factor`` (a forged, much higher frame rate)."""
    buf = bytearray(data)
    if size is not None:
        w, h = size
        at = buf.find(b"tkhd")
        while at >= 0:
            payload = at + 4
            offset = 76 if buf[payload] == 0 else 88
            buf[payload + offset:payload + offset + 8] = struct.pack(">II", w << 16, h << 16)
            at = buf.find(b"tkhd", at + 4)
        for codec in (b"mp4v", b"avc1"):
            at = buf.find(codec)
            if at >= 0:
                entry = at - 4
                buf[entry + 32:entry + 36] = struct.pack(">HH", min(w, 65535), min(h, 65535))
    if timescale_factor is not None:
        at = buf.find(b"mdhd")
        payload = at + 4
        offset = 12 if buf[payload] == 0 else 20
        (scale,) = struct.unpack(">I", buf[payload + offset:payload + offset + 4])
        buf[payload + offset:payload + offset + 4] = struct.pack(">I", scale * timescale_factor)
    return bytes(buf)
