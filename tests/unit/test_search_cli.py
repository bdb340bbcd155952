"""``omniret search`` on a real LanceDB index in tmp_path, embedded by the tiny model: which row comes
first for image, page and text queries, filters, JSON output, and one-line errors with exit code 2."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json

import pyarrow as pa
import pytest
from PIL import Image

from omniret.cli import main
from omniret.index.schema import item_id, items_schema
from omniret.index.store import IndexStore
from omniret.ingest.embed import model_tag
from omniret.items import Item, PageRef
from omniret.media.synth import draw_scene, write_pdf
from omniret.models.embedder import Embedder


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, make_config):
    """Three pictures and a two-page PDF, embedded and written as the ingest writes rows."""
    root = tmp_path_factory.mktemp("search")
    pictures = {name: draw_scene([{"shape": shape, "color": color, "x": 42, "y": 42, "size": 30}], size=(84, 84))
                for name, shape, color in [("red_circle", "circle", "red"), ("blue_square", "square", "blue"),
                                           ("green_triangle", "triangle", "green")]}
    for name, picture in pictures.items():
        picture.save(root / f"{name}.png")
    pdf = write_pdf(root / "report.pdf", ["Invoice 42: blue squares shipped on Tuesday.",
                                          "Minutes of the meeting about green triangles."])
    overrides = [f"index.uri={root / 'db'}"]
    cfg = make_config("qwen2_vl", *overrides)
    units = [(root / f"{n}.png", None) for n in pictures] + [(pdf, 0), (pdf, 1)]
    texts = [None, None, None, "Invoice 42: blue squares shipped on Tuesday.",
             "Minutes of the meeting about green triangles."]
    items = [Item(images=[str(p)]) if page is None else Item(page=PageRef(str(p), page)) for p, page in units]
    vectors = Embedder.from_config(cfg).encode(items, progress=False)
    thumb = io.BytesIO()
    Image.new("RGB", (8, 8)).save(thumb, format="JPEG")
    records = []
    for (path, page), text, vector in zip(units, texts, vectors, strict=True):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        records.append({"id": item_id(sha, "image" if page is None else f"page={page}"), "source_uri": str(path),
                        "sha256": sha, "modality": "image" if page is None else "page", "page": page,
                        "t_start": None, "t_end": None, "text": text, "thumbnail": thumb.getvalue(),
                        "vector": vector.tolist(), "model": model_tag(cfg), "created_at": dt.datetime.now(dt.timezone.utc)})
    store = IndexStore(cfg.index, fresh=True)
    store.create(len(vectors[0]), model_tag(cfg))
    store.upsert(pa.Table.from_pylist(records, schema=items_schema(len(vectors[0]), model_tag(cfg))))
    store.maintain()  # the full-text index hybrid search needs
    return root, [f"model.path={cfg.model.path}", *overrides]


def search(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["search", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_image_query_finds_its_own_picture_first(indexed, capsys):
    root, overrides = indexed
    code, out, _ = search(capsys, "--image", str(root / "blue_square.png"), "--json", *overrides)
    results = json.loads(out)["results"]
    assert code == 0 and results[0]["source_uri"] == str(root / "blue_square.png")
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4) and len(results) == 5


def test_page_query_filters_and_table(indexed, capsys):
    root, overrides = indexed
    code, out, _ = search(capsys, "--pdf", str(root / "report.pdf"), "--page", "1", "--json", *overrides)
    first = json.loads(out)["results"][0]
    assert code == 0 and (first["source_uri"], first["page"]) == (str(root / "report.pdf"), 1)
    code, out, _ = search(capsys, "--pdf", str(root / "report.pdf"), "--modality", "image", "--json", *overrides)
    assert {r["modality"] for r in json.loads(out)["results"]} == {"image"}
    code, out, _ = search(capsys, "--text", "a shape", "--source-prefix", str(root / "red"), *overrides)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 and lines[1].split()[3] == str(root / "red_circle.png")


def test_hybrid_puts_the_text_match_first(indexed, capsys):
    _, overrides = indexed
    code, out, _ = search(capsys, "--text", "invoice", "--hybrid", "--modality", "page", "--json", *overrides)
    first = json.loads(out)["results"][0]
    assert code == 0 and first["page"] == 0 and "Invoice" in first["text"]


def test_rerank_scores_every_result(indexed, capsys):
    _, overrides = indexed
    code, out, _ = search(capsys, "--text", "a red circle", "--rerank", "-k", "3", "--json", *overrides)
    results = json.loads(out)["results"]
    scores = [r["rerank_score"] for r in results]
    assert code == 0 and len(results) == 3 and scores == sorted(scores, reverse=True)


def test_multivector_query_reads_the_tables_k_and_finds_its_picture(indexed, make_config, tmp_path, capsys):
    root, _ = indexed
    cfg = make_config("qwen2_vl", f"index.uri={tmp_path / 'db'}")
    names = ["red_circle", "blue_square", "green_triangle"]
    vectors = Embedder.from_config(cfg).encode([Item(images=[str(root / f"{n}.png")]) for n in names],
                                               progress=False, multivector=(3, "last"))
    dim = vectors.shape[-1]
    records = [{"id": item_id(f"{i:064x}", "image"), "source_uri": str(root / f"{n}.png"), "sha256": f"{i:064x}",
                "modality": "image", "vector": v[0].tolist(), "multivector": v[1:].tolist(), "model": model_tag(cfg),
                "created_at": dt.datetime.now(dt.timezone.utc)} for i, (n, v) in enumerate(zip(names, vectors, strict=True))]
    store = IndexStore(cfg.index, fresh=True)
    store.create(dim, model_tag(cfg), (3, "last"))
    store.upsert(pa.Table.from_pylist(records, schema=items_schema(dim, model_tag(cfg), (3, "last"))))
    # The table says K=3 read from the last positions; the configuration's defaults (8, segments) do not apply.
    code, out, _ = search(capsys, "--image", str(root / "blue_square.png"), "--multivector", "--json",
                          f"model.path={cfg.model.path}", f"index.uri={tmp_path / 'db'}")
    results = json.loads(out)["results"]
    assert code == 0 and json.loads(out)["multivector"] is True
    assert results[0]["source_uri"] == str(root / "blue_square.png") and results[0]["score"] == pytest.approx(3.0, abs=1e-4)


@pytest.mark.parametrize("case", ["missing index", "unreadable image", "missing table", "other model",
                                  "no multivector column"])
def test_errors_are_one_line_and_exit_2(indexed, tmp_path, capsys, case):
    _, overrides = indexed
    args = {"missing index": ["--text", "x", *overrides, f"index.uri={tmp_path / 'nothing'}"],
            "missing table": ["--text", "x", *overrides, "index.table=other"],
            "unreadable image": ["--image", str(tmp_path / "broken.png"), *overrides],
            "other model": ["--text", "x", *overrides, "embed.dimensions=32"],
            "no multivector column": ["--text", "x", "--multivector", *overrides]}[case]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = search(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("omniret search: error: ")
    assert {"missing index": "no index at", "missing table": "no table 'other'", "unreadable image": "broken.png",
            "other model": "holds vectors of model", "no multivector column": "no 'multivector' column"}[case] in err
