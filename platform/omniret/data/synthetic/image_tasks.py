"""Generated image tasks: classification (shape, colour, count), compositional caption retrieval,
composed image+text retrieval, visual question answering and grounding.

Every builder takes a :class:`Ctx` and a count and returns :class:`Example` records whose query is
about a combination of this split (held-out ones for evaluation) and whose negatives come hardest
first: near misses that differ from the positive in one attribute, count, relation or position.
``meta["combos"]`` lists every colour x shape combination shown anywhere in the example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from omniret.data.schema import Side
from omniret.data.synthetic.common import Ctx, Example, fill
from omniret.data.synthetic.scenes import (
    COLOR_NAMES,
    COUNT_WORDS,
    POSITION_NAMES,
    Combo,
    Scene,
    crop_cell,
    describe_count,
)
from omniret.data.synthetic.teacher import describe_scene
from omniret.media.synth import SHAPES

CLS_INSTRUCTIONS = {
    "shape": "Classify the shape of the object in the image.",
    "color": "Classify the colour of the object in the image.",
    "count": "Count the objects in the image.",
}
T2I_INSTRUCTION = "Find an image that matches the given caption."
IMAGE_INSTRUCTION = "Represent the given image."
IT2I_INSTRUCTION = "Given an image and a change to make, find the changed image."
VQA_INSTRUCTION = "Answer the question about the image."
VG_INSTRUCTION = "Select the portion of the image that isolates the described object."


class Shown:
    """Renders scenes to image sides and remembers every scene shown (for ``meta["combos"]``)."""

    def __init__(self, ctx: Ctx):
        self.ctx, self.scenes = ctx, []

    def image(self, scene: Scene, crop_of: tuple[int, int] | None = None, instruction: str | None = IMAGE_INSTRUCTION
              ) -> Side:
        self.scenes.append(scene)
        picture = self.ctx.scenes.render(scene)
        if crop_of is not None:
            picture = crop_cell(picture, crop_of)
        note = describe_scene(scene, crop_of)  # what a teacher sees in the picture (teacher.py)
        return Side(images=[self.ctx.media.image(picture, note=note)], instruction=instruction)

    def maker(self, scene: Scene, crop_of: tuple[int, int] | None = None) -> Callable[[], Side]:
        return lambda: self.image(scene, crop_of)

    def random_single(self, exclude: Combo, crop: bool = False) -> Side:
        scene = (self.ctx.scenes.obj(self.ctx.scenes.other((exclude,))),)
        return self.image(scene, scene[0].cell if crop else None)

    def meta(self, target: Combo, **extra) -> dict:
        combos = sorted({o.combo for s in self.scenes for o in s})
        return {"target": list(target), "combos": [list(c) for c in combos], **extra}


def _labels(ctx: Ctx, answer: str, options: tuple[str, ...]) -> list[Side]:
    others = [o for o in options if o != answer]
    ctx.rng.shuffle(others)
    return [Side(text=o) for o in others[: ctx.negatives]]


def classification(attribute: str):
    """Builder of the ``attribute`` (shape / color / count) classification task."""
    options = {"shape": SHAPES, "color": COLOR_NAMES, "count": COUNT_WORDS[1:5]}[attribute]

    def build(ctx: Ctx, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            shown = Shown(ctx)
            combo = ctx.scenes.target()
            k = ctx.rng.randint(1, 4) if attribute == "count" else 1
            scene = tuple(ctx.scenes.obj(combo, cell) for cell in ctx.scenes.cells(k))
            label = {"shape": combo[1], "color": combo[0], "count": COUNT_WORDS[k]}[attribute]
            query = shown.image(scene, instruction=CLS_INSTRUCTIONS[attribute])
            out.append(Example(query, Side(text=label), _labels(ctx, label, options),
                               shown.meta(combo, label=label)))
        return out

    return build


def caption_retrieval(ctx: Ctx, n: int) -> list[Example]:
    """Caption -> image; captions name attributes, counts or a spatial relation between two objects."""
    out = []
    for _ in range(n):
        shown = Shown(ctx)
        combo = ctx.scenes.target()
        kind = ctx.rng.choice(["single", "count", "relation"])
        if kind == "single":
            obj = ctx.scenes.obj(combo)
            scene: Scene = (obj,)
            caption = f"a {combo[0]} {combo[1]}"
            near = [(replace(obj, color=c, shape=s),) for c, s in ctx.scenes.near_combos(combo)]
            ctx.rng.shuffle(near)
        elif kind == "count":
            k = ctx.rng.randint(1, 4)
            scene = tuple(ctx.scenes.obj(combo, c) for c in ctx.scenes.cells(k))
            caption = describe_count(k, combo)
            near = [tuple(ctx.scenes.obj(combo, c) for c in ctx.scenes.cells(m)) for m in (k - 1, k + 1)
                    if 1 <= m <= 4]
            swap = ctx.rng.choice(ctx.scenes.near_combos(combo))
            near.append(tuple(replace(o, color=swap[0], shape=swap[1]) for o in scene))
        else:
            scene, caption, near = _relation(ctx, combo)
        positive = shown.image(scene)
        negatives = fill(ctx, [shown.maker(s) for s in near], lambda s=shown, c=combo: s.random_single(c))
        out.append(Example(Side(text=caption, instruction=T2I_INSTRUCTION), positive, negatives,
                           shown.meta(combo, kind=kind, caption=caption)))
    return out


def _relation(ctx: Ctx, combo: Combo) -> tuple[Scene, str, list[Scene]]:
    other = ctx.scenes.other((combo,))
    if ctx.rng.random() < 0.5:  # left of: same row
        row, (c1, c2) = ctx.rng.randrange(3), sorted(ctx.rng.sample(range(3), 2))
        first, second, words = (row, c1), (row, c2), "to the left of"
    else:  # above: same column
        col, (r1, r2) = ctx.rng.randrange(3), sorted(ctx.rng.sample(range(3), 2))
        first, second, words = (r1, col), (r2, col), "above"
    a, b = ctx.scenes.obj(combo, first), ctx.scenes.obj(other, second)
    caption = f"a {a.phrase} {words} a {b.phrase}"
    swapped = (replace(a, cell=second, dx=b.dx, dy=b.dy), replace(b, cell=first, dx=a.dx, dy=a.dy))
    recolor_b = ctx.rng.choice([c for c in COLOR_NAMES if c not in (b.color, a.color)])
    near_a = ctx.rng.choice(ctx.scenes.near_combos(combo))
    near = [swapped, (replace(a, color=near_a[0], shape=near_a[1]), b), (a, replace(b, color=recolor_b))]
    return (a, b), caption, near


def composed_retrieval(ctx: Ctx, n: int) -> list[Example]:
    """Image + change ("make it red", "turn it into a square") -> the changed image."""
    out = []
    for _ in range(n):
        shown = Shown(ctx)
        target = ctx.scenes.target()
        colors = [c for c, s in ctx.scenes.others if s == target[1] and c != target[0]]
        shapes = [s for c, s in ctx.scenes.others if c == target[0] and s != target[1]]
        if not shapes or ctx.rng.random() < 0.5:
            source, change = (ctx.rng.choice(colors), target[1]), f"make it {target[0]}"
        else:
            source, change = (target[0], ctx.rng.choice(shapes)), f"turn it into a {target[1]}"
        before = ctx.scenes.obj(source)
        after = replace(before, color=target[0], shape=target[1])
        moved = ctx.rng.choice([c for c in POSITION_NAMES if c != before.cell])
        wrong = [c for c in ctx.scenes.near_combos(target) if c != source]
        near: list[Scene] = [(before,), (replace(after, cell=moved),)]
        near += [(replace(before, color=c, shape=s),) for c, s in ctx.rng.sample(wrong, min(2, len(wrong)))]
        query = shown.image((before,), instruction=IT2I_INSTRUCTION)
        query.text = change
        positive = shown.image((after,))
        negatives = fill(ctx, [shown.maker(s) for s in near], lambda s=shown, t=target: s.random_single(t))
        out.append(Example(query, positive, negatives, shown.meta(target, change=change)))
    return out


def _distractors(ctx: Ctx, target: Combo, k: int) -> list[Combo]:
    """Up to ``k`` combinations differing from ``target`` and from each other in both colour and shape."""
    chosen: list[Combo] = []
    pool = [c for c in ctx.scenes.others if c[0] != target[0] and c[1] != target[1]]
    ctx.rng.shuffle(pool)
    for combo in pool:
        if len(chosen) < k and all(combo[0] != c[0] and combo[1] != c[1] for c in chosen):
            chosen.append(combo)
    return chosen


def question_answering(ctx: Ctx, n: int) -> list[Example]:
    """Image + question about colour, shape, count or position -> the answer among the answers of its kind."""
    out = []
    for _ in range(n):
        shown = Shown(ctx)
        target = ctx.scenes.target()
        others = _distractors(ctx, target, ctx.rng.randint(1, 2))
        cells = ctx.scenes.cells(1 + len(others))
        obj = ctx.scenes.obj(target, cells[0])
        scene: Scene = (obj, *(ctx.scenes.obj(c, cell) for c, cell in zip(others, cells[1:], strict=True)))
        kind = ctx.rng.choice(["color", "shape", "count", "position"])
        question, answer, options = {
            "color": (f"What colour is the {target[1]}?", target[0], COLOR_NAMES),
            "shape": (f"What shape is the {target[0]} object?", target[1], SHAPES),
            "count": ("How many objects are there?", COUNT_WORDS[len(scene)], COUNT_WORDS[1:5]),
            "position": (f"Where is the {obj.phrase}?", POSITION_NAMES[obj.cell], tuple(POSITION_NAMES.values())),
        }[kind]
        query = shown.image(scene, instruction=VQA_INSTRUCTION)
        query.text = question
        out.append(Example(query, Side(text=answer), _labels(ctx, answer, options),
                           shown.meta(target, kind=kind, answer=answer)))
    return out


def grounding(ctx: Ctx, n: int) -> list[Example]:
    """Image + a description ("the object at the top-left", "the red square") -> the crop of that object."""
    out = []
    for _ in range(n):
        shown = Shown(ctx)
        target = ctx.scenes.target()
        others = [ctx.scenes.other((target,)) for _ in range(2)]
        cells = ctx.scenes.cells(3)
        obj = ctx.scenes.obj(target, cells[0])
        scene: Scene = (obj, *(ctx.scenes.obj(c, cell) for c, cell in zip(others, cells[1:], strict=True)))
        by_position = ctx.rng.random() < 0.5
        described = f"the object at the {POSITION_NAMES[obj.cell]}" if by_position else f"the {obj.phrase}"
        near_combo = ctx.rng.choice(ctx.scenes.near_combos(target))
        near_obj = replace(obj, color=near_combo[0], shape=near_combo[1])
        crops = [shown.maker(scene, o.cell) for o in scene[1:]]
        near = shown.maker((near_obj,), obj.cell)
        query = shown.image(scene, instruction=VG_INSTRUCTION)
        query.text = described
        positive = shown.image(scene, obj.cell)
        negatives = fill(ctx, [*crops, near] if by_position else [near, *crops],
                         lambda s=shown, t=target: s.random_single(t, crop=True))
        out.append(Example(query, positive, negatives, shown.meta(target, described=described)))
    return out
