"""The demo corpus: a handful of scene pictures, two short videos and two PDFs, with known content.

``corpus.json`` lists every file with what it shows, so a demo (or a test) can check that a search
for "a blue square moving right" finds the right video. Same folder, same bytes, every time.
"""

from __future__ import annotations

import json
from pathlib import Path

from omniret.data.synthetic.scenes import Obj, render
from omniret.media.synth import write_moving_video, write_pdf

SIZE = 112
IMAGES = {
    "red_circle": ((Obj("red", "circle", (1, 1), 30),), "a red circle"),
    "blue_square": ((Obj("blue", "square", (1, 1), 30),), "a blue square"),
    "green_triangle": ((Obj("green", "triangle", (1, 1), 30),), "a green triangle"),
    "yellow_circle": ((Obj("yellow", "circle", (1, 1), 30),), "a yellow circle"),
    "two_purple_squares": ((Obj("purple", "square", (0, 0), 26), Obj("purple", "square", (2, 2), 26)),
                           "two purple squares"),
    "orange_left_of_blue": ((Obj("orange", "triangle", (1, 0), 28), Obj("blue", "circle", (1, 2), 28)),
                            "an orange triangle to the left of a blue circle"),
}
VIDEOS = {
    "blue_square_right": (("square", "blue", "right"), "a blue square moving right"),
    "red_circle_down": (("circle", "red", "down"), "a red circle moving down"),
}
DOCS = {
    "shapes_report": (["Chapter one: red circles and where they are used.",
                       "Chapter two: green triangles in the field, with counts per site.",
                       "Chapter three: yellow circles at dusk."], "Shapes report"),
    "stock_report": (["Overview: this report lists the stock of blue squares and purple triangles.",
                      "Blue squares at the north site: 42 in stock, shipped on Tuesday from dock 7.",
                      "Purple triangles at the hill site: 17 in stock, shipped on Friday from dock 2."],
                     "Stock report"),
}


def write_demo_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written, described = [], []
    for name, (scene, text) in IMAGES.items():
        path = folder / "images" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        render(scene, SIZE).save(path, format="PNG")
        written.append(path)
        described.append({"path": str(path.relative_to(folder)), "kind": "image", "shows": text})
    for name, ((shape, color, direction), text) in VIDEOS.items():
        path = folder / "videos" / f"{name}.mp4"
        path.parent.mkdir(exist_ok=True)
        write_moving_video(path, shape=shape, color=color, direction=direction, num_frames=16, size=(SIZE, SIZE))
        written.append(path)
        described.append({"path": str(path.relative_to(folder)), "kind": "video", "shows": text})
    for name, (pages, title) in DOCS.items():
        path = folder / "docs" / f"{name}.pdf"
        path.parent.mkdir(exist_ok=True)
        write_pdf(path, pages, title=title)
        written.append(path)
        described.append({"path": str(path.relative_to(folder)), "kind": "pdf", "pages": pages})
    (folder / "corpus.json").write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")
    return written
