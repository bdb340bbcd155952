"""The demo corpus and its queries: pictures, clips and PDF pages from the benchmark's generator.

The corpus is drawn with the training data's own scene sampler and renderers (:mod:`.scenes`,
:mod:`.video_tasks`, :mod:`.doc_tasks`) but is held out from it: objects have the evaluation split's
odd pixel sizes, so no picture or clip can equal a training one, and the reports list other facts.
Queries name colour x shape combinations that training shows; the four held-out combinations appear
only as distractors. Every query's right answer sits next to distractors that differ from it in one
attribute: the same shape in other colours, the same object in other counts, the two objects of a
relation swapped, the same clip played backwards, the same product at another site.

``corpus.json`` lists the corpus files and the queries with their expected answers (file, and page
for PDFs); query pictures and pages live under ``queries/`` and are not part of the corpus. Same
seed, same bytes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from omniret.data.synthetic.doc_tasks import DAYS, QUESTIONS, SITES, _overview, _page_text, _product
from omniret.data.synthetic.scenes import Obj, SceneMaker, describe_count, render, split_combos
from omniret.data.synthetic.video_tasks import OPPOSITE, caption
from omniret.media.synth import SHAPES, write_moving_video, write_pdf

IMAGE_SIZE = 84  # the benchmark's picture and clip size: what the trained model has seen
VIDEO_FRAMES = 8
COUNT_COMBOS = 4  # combinations shown two and three times (the single is among the single objects)
RELATIONS = 6  # relation scenes, each with its swapped twin
CLIPS = 6  # clips, each with its reversed twin
REPORTS = 4  # PDFs of 4 pages: an overview and three products
IMAGE_QUERIES = 5
PAGE_QUERIES = 3


@dataclass
class DemoQuery:
    """A query and its right answer: ``expect`` is a corpus path (relative) and, for PDFs, the page."""

    kind: str  # colour+shape | count | position | motion | page text | image | page
    expect: str
    expect_page: int | None = None
    text: str | None = None
    image: str | None = None  # a picture under queries/
    pdf: str | None = None  # a PDF under queries/ whose page ``page`` is the query
    page: int | None = None

    def label(self) -> str:
        return self.text or Path(self.image or self.pdf or "").name


def write_demo_corpus(folder: Path, seed: int = 0, held_out: int = 4) -> list[Path]:
    """Write the corpus and ``corpus.json`` under ``folder``; returns the corpus files (not the queries)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"demo-{seed}")
    train, held = split_combos(seed, held_out)
    # The evaluation split's sampler: odd object sizes, which training pictures never use.
    scenes = SceneMaker(rng, "eval", IMAGE_SIZE, train, held)
    writer = _Writer(folder)
    queries: list[DemoQuery] = []

    # Single objects: every training combination (queried) and the held-out ones (distractors only).
    singles: dict[tuple[str, str], Obj] = {}
    for combo in train + held:
        obj = scenes.obj(combo)
        singles[combo] = obj
        path = writer.image(f"images/{combo[0]}_{combo[1]}.png", (obj,))
        if combo in train:
            queries.append(DemoQuery("colour+shape", path, text=f"a {combo[0]} {combo[1]}"))

    # Counts: two and three of a combination, next to its single object.
    for combo in rng.sample(train, COUNT_COMBOS):
        for k in (2, 3):
            scene = tuple(scenes.obj(combo, cell) for cell in scenes.cells(k))
            path = writer.image(f"images/{k}_{combo[0]}_{combo[1]}.png", scene)
            queries.append(DemoQuery("count", path, text=describe_count(k, combo)))

    # Positions: "a X to the left of a Y" (or above), with the swapped scene in the corpus too.
    for i in range(RELATIONS):
        a_combo, b_combo = rng.sample(train, 2)
        if i % 2 == 0:
            row, (c1, c2) = rng.randrange(3), sorted(rng.sample(range(3), 2))
            first, second, words = (row, c1), (row, c2), "to the left of"
        else:
            col, (r1, r2) = rng.randrange(3), sorted(rng.sample(range(3), 2))
            first, second, words = (r1, col), (r2, col), "above"
        a, b = scenes.obj(a_combo, first), scenes.obj(b_combo, second)
        path = writer.image(f"images/relation_{i}.png", (a, b))
        writer.image(f"images/relation_{i}_swapped.png", (replace(a, cell=second), replace(b, cell=first)))
        queries.append(DemoQuery("position", path, text=f"a {a.phrase} {words} a {b.phrase}"))

    # Motion: clips with their reversed twins (same frames backwards): only frame order tells them apart.
    axes = {"horizontal": ("left", "right"), "vertical": ("up", "down")}
    bases = [(combo, axis) for combo in train for axis in axes]
    for i, (combo, axis) in enumerate(rng.sample(bases, CLIPS)):
        lane, size = rng.randrange(3), scenes.size()
        asked = rng.choice(axes[axis])
        for direction in (asked, OPPOSITE[asked]):
            clip = (combo[0], combo[1], direction, lane, size)
            path = writer.video(f"videos/clip_{i}_{direction}.mp4", clip)
            if direction == asked:
                queries.append(DemoQuery("motion", path, text=caption(clip)))

    # Pages: stock reports (overview + one page per product); questions about one product at one site.
    products = [(c, s, site) for (c, s) in rng.sample(train, REPORTS * 3 // 2 + 1) for site in rng.sample(SITES, 2)]
    products = products[: REPORTS * 3]
    rng.shuffle(products)
    facts = {p: {"units": rng.randint(10, 99), "day": rng.choice(DAYS), "dock": rng.randint(1, 9)} for p in products}
    page_texts: dict[tuple[str, str, str], tuple[str, int, str]] = {}
    for r in range(REPORTS):
        chunk = products[3 * r: 3 * r + 3]
        texts = [_overview(chunk)] + [_page_text(_product(c, s), site, facts[(c, s, site)]) for c, s, site in chunk]
        path = writer.pdf(f"docs/stock_report_{r + 1}.pdf", texts, f"Stock report {r + 1}")
        for page, product in enumerate(chunk, start=1):
            page_texts[product] = (path, page, texts[page])
    for product in products[:6]:
        c, s, site = product
        _, template = QUESTIONS[rng.randrange(len(QUESTIONS))]
        path, page, _ = page_texts[product]
        queries.append(DemoQuery("page text", path, page, text=template.format(product=_product(c, s), site=site)))

    # Query by example: a new picture of a single object (another size and place), and a page
    # excerpt (the same text in a one-page PDF of its own) whose report page should come first.
    for i, combo in enumerate(rng.sample(train, IMAGE_QUERIES)):
        obj = scenes.obj(combo)
        while obj.cell == singles[combo].cell:
            obj = scenes.obj(combo)
        path = writer.image(f"queries/picture_{i}.png", (obj,), corpus=False)
        queries.append(DemoQuery("image", f"images/{combo[0]}_{combo[1]}.png", image=path))
    for i, product in enumerate(rng.sample(products, PAGE_QUERIES)):
        path, page, text = page_texts[product]
        query = writer.pdf(f"queries/excerpt_{i}.pdf", [text], None, corpus=False)
        queries.append(DemoQuery("page", path, page, pdf=query, page=0))

    manifest = {"format": "omniret-demo/1", "seed": seed, "held_out": [list(c) for c in held],
                "files": writer.described, "queries": [asdict(q) for q in queries]}
    (folder / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return writer.written


def read_demo_queries(folder: str | Path) -> list[DemoQuery]:
    """The queries ``corpus.json`` under ``folder`` lists (paths relative to ``folder``)."""
    manifest = json.loads((Path(folder) / "corpus.json").read_text(encoding="utf-8"))
    return [DemoQuery(**q) for q in manifest["queries"]]


class _Writer:
    """Writes files under the corpus folder and remembers which belong to the corpus."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: list[Path] = []
        self.described: list[dict] = []

    def _path(self, rel: str, kind: str, corpus: bool, shows: str | list[str]) -> Path:
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if corpus:
            self.written.append(path)
            self.described.append({"path": rel, "kind": kind, "shows": shows})
        return path

    def image(self, rel: str, scene: tuple[Obj, ...], corpus: bool = True) -> str:
        shows = ", ".join(f"{o.phrase} at {o.cell}" for o in scene)
        render(scene, IMAGE_SIZE).save(self._path(rel, "image", corpus, shows), format="PNG")
        return rel

    def video(self, rel: str, clip: tuple[str, str, str, int, int]) -> str:
        color, shape, direction, lane, size = clip
        assert shape in SHAPES
        write_moving_video(self._path(rel, "video", True, caption(clip)), shape=shape, color=color,
                           direction=direction, num_frames=VIDEO_FRAMES, size=(IMAGE_SIZE, IMAGE_SIZE), fps=8,
                           shape_size=size, offset=(lane - 1) * IMAGE_SIZE / 3)
        return rel

    def pdf(self, rel: str, pages: list[str], title: str | None, corpus: bool = True) -> str:
        write_pdf(self._path(rel, "pdf", corpus, pages), pages, title=title)
        return rel
