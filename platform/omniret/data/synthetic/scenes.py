"""Scenes of coloured shapes on a 3x3 grid: sampling, rendering, wording, and the held-out combinations.

A scene is a tuple of :class:`Obj` (colour, shape, grid cell, size, small offset). At the default
84-pixel image each cell is 28 pixels, one merged vision token of Qwen2-VL, so a tiny model sees one
object per token. Everything is drawn from a ``random.Random`` passed in, never global randomness.

Splits are made disjoint by construction, not only by seed:

- colour x shape *combinations* are split (:func:`split_combos`): every query of the evaluation
  split is about a held-out combination that no training scene contains;
- object sizes are even pixel counts in training scenes and odd ones in evaluation scenes, so no
  evaluation picture (including near-miss candidates made only of training combinations) can be
  pixel-identical to a training picture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image

from omniret.media.synth import COLORS, SHAPES, draw_scene

Combo = tuple[str, str]  # (colour, shape)
Cell = tuple[int, int]  # (row, column)

COLOR_NAMES = tuple(COLORS)
CELLS: tuple[Cell, ...] = tuple((r, c) for r in range(3) for c in range(3))
POSITION_NAMES = {(0, 0): "top-left", (0, 1): "top", (0, 2): "top-right", (1, 0): "left", (1, 1): "centre",
                  (1, 2): "right", (2, 0): "bottom-left", (2, 1): "bottom", (2, 2): "bottom-right"}
COUNT_WORDS = ("zero", "one", "two", "three", "four")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    cell: Cell
    size: int  # pixels at the scene's image size; even in training scenes, odd in evaluation ones
    dx: int = 0  # offset of the centre from the cell's centre, pixels
    dy: int = 0

    @property
    def combo(self) -> Combo:
        return (self.color, self.shape)

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


Scene = tuple[Obj, ...]


def split_combos(seed: int, held_out: int) -> tuple[list[Combo], list[Combo]]:
    """(train, eval) colour x shape combinations; eval ones use distinct colours where possible."""
    combos = [(c, s) for c in COLOR_NAMES for s in SHAPES]
    if not 1 <= held_out <= len(combos) - len(SHAPES):
        raise ValueError(f"held_out must be between 1 and {len(combos) - len(SHAPES)}, got {held_out}")
    rng = random.Random(f"combos-{seed}")
    colors = rng.sample(COLOR_NAMES, len(COLOR_NAMES))
    shapes = list(SHAPES)
    rng.shuffle(shapes)
    held = [(colors[i % len(colors)], shapes[i % len(shapes)]) for i in range(held_out)]
    held = list(dict.fromkeys(held))
    while len(held) < held_out:  # more held-out combinations than colours: fill with unused ones
        held.append(rng.choice([c for c in combos if c not in held]))
    return [c for c in combos if c not in held], held


class SceneMaker:
    """Samples objects and scenes for one split (``train`` or ``eval``) at one image size."""

    def __init__(self, rng: random.Random, split: str, image_size: int, train: list[Combo], held: list[Combo]):
        self.rng, self.split, self.image_size = rng, split, image_size
        self.train_combos, self.held_combos = train, held
        self.cell_px = image_size / 3

    @property
    def targets(self) -> list[Combo]:
        """Combinations a query of this split may be about."""
        return self.held_combos if self.split == "eval" else self.train_combos

    @property
    def others(self) -> list[Combo]:
        """Combinations a distractor of this split may show (never a held-out one in training)."""
        return self.train_combos if self.split == "train" else self.train_combos + self.held_combos

    def size(self) -> int:
        low, high = round(self.cell_px * 0.55), round(self.cell_px * 0.85)
        sizes = [s for s in range(low, high + 1) if s % 2 == (0 if self.split == "train" else 1)]
        return self.rng.choice(sizes)

    def obj(self, combo: Combo, cell: Cell | None = None) -> Obj:
        size = self.size()
        slack = max(0, int((self.cell_px - size) / 2) - 1)
        return Obj(combo[0], combo[1], cell or self.rng.choice(CELLS), size,
                   self.rng.randint(-slack, slack), self.rng.randint(-slack, slack))

    def target(self) -> Combo:
        return self.rng.choice(self.targets)

    def other(self, exclude: tuple[Combo, ...] = ()) -> Combo:
        return self.rng.choice([c for c in self.others if c not in exclude])

    def cells(self, n: int) -> list[Cell]:
        return self.rng.sample(CELLS, n)

    def near_combos(self, combo: Combo) -> list[Combo]:
        """Combinations differing from ``combo`` in colour or shape (allowed in this split)."""
        allowed = set(self.others) | {combo}
        near = [(c, combo[1]) for c in COLOR_NAMES if c != combo[0]] + \
               [(combo[0], s) for s in SHAPES if s != combo[1]]
        return [c for c in near if c in allowed]

    def render(self, scene: Scene) -> Image.Image:
        return render(scene, self.image_size)


def render(scene: Scene, image_size: int) -> Image.Image:
    cell = image_size / 3
    objects = [{"shape": o.shape, "color": o.color, "size": o.size,
                "x": round((o.cell[1] + 0.5) * cell) + o.dx, "y": round((o.cell[0] + 0.5) * cell) + o.dy}
               for o in scene]
    return draw_scene(objects, size=(image_size, image_size))


def crop_cell(image: Image.Image, cell: Cell, out_size: int = 56) -> Image.Image:
    """The grid cell ``cell`` of a scene picture, scaled to ``out_size`` (nearest neighbour: exact pixels)."""
    step = image.width / 3
    box = (round(cell[1] * step), round(cell[0] * step), round((cell[1] + 1) * step), round((cell[0] + 1) * step))
    return image.crop(box).resize((out_size, out_size), Image.Resampling.NEAREST)


def recolor(obj: Obj, color: str) -> Obj:
    return replace(obj, color=color)


def reshape(obj: Obj, shape: str) -> Obj:
    return replace(obj, shape=shape)


def describe_count(n: int, combo: Combo) -> str:
    return f"one {combo[0]} {combo[1]}" if n == 1 else f"{COUNT_WORDS[n]} {combo[0]} {PLURALS[combo[1]]}"
