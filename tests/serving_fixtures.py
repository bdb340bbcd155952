"""Helpers shared by the serving tests: a small indexed corpus and data: URIs."""

from __future__ import annotations

import base64
import datetime as dt
import io
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
