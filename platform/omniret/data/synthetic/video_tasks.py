"""Generated video tasks: caption -> video retrieval and direction question answering.

Each video shows one shape crossing the frame left, right, up or down along one of three lanes.
A video and its opposite-direction twin hold the same frames in reverse order, so only a model that
reads frame order tells them apart; both are always in the evaluation pool.
"""

from __future__ import annotations

import itertools

from omniret.data.schema import Side
from omniret.data.synthetic.common import Ctx, Example, fill
from omniret.data.synthetic.scenes import Combo
from omniret.items import VideoRef
from omniret.media.synth import DIRECTIONS, write_moving_video

T2V_INSTRUCTION = "Find a video that contains the following visual content."
VIDEO_INSTRUCTION = "Understand the content of the provided video."
VQA_INSTRUCTION = "Answer the question about the video."
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
LANES = {"horizontal": ("top", "middle", "bottom"), "vertical": ("left side", "middle", "right side")}

Clip = tuple[str, str, str, int, int]  # colour, shape, direction, lane, size


def _lane_name(direction: str, lane: int) -> str:
    return LANES["horizontal" if direction in ("left", "right") else "vertical"][lane]


def caption(clip: Clip) -> str:
    color, shape, direction, lane, _ = clip
    return f"a {color} {shape} moving {direction} along the {_lane_name(direction, lane)}"


def video_side(ctx: Ctx, clip: Clip) -> Side:
    color, shape, direction, lane, size = clip
    offset = (lane - 1) * ctx.video_size / 3

    def write(path):
        write_moving_video(path, shape=shape, color=color, direction=direction, num_frames=ctx.video_frames,
                           size=(ctx.video_size, ctx.video_size), fps=8, shape_size=size, offset=offset)

    rel = ctx.media.file(".mp4", write, key=repr(clip), note=caption(clip))
    return Side(video=VideoRef(rel), instruction=VIDEO_INSTRUCTION)


def _clips(ctx: Ctx, n: int) -> list[Clip]:
    """``n`` clips of this split's combinations, each next to its reversed twin (same lane and size).

    Evaluation clips are distinct (combination, direction, lane) triples, so no caption matches two
    videos; training clips repeat triples (with other sizes) once those run out.
    """
    axes = {"horizontal": ("left", "right"), "vertical": ("up", "down")}
    bases = list(itertools.product(ctx.scenes.targets, axes, range(3)))
    ctx.rng.shuffle(bases)
    if ctx.split == "eval":
        n = min(n, 2 * len(bases))
    clips: list[Clip] = []
    for i in range((n + 1) // 2):
        combo, axis, lane = bases[i % len(bases)]
        size = ctx.scenes.size()
        clips += [(combo[0], combo[1], direction, lane, size) for direction in axes[axis]]
    return clips[:n]


def _meta(*clips: Clip, **extra) -> dict:
    combos = sorted({(c[0], c[1]) for c in clips})
    return {"target": [clips[0][0], clips[0][1]], "combos": [list(c) for c in combos], **extra}


def caption_to_video(ctx: Ctx, n: int) -> list[Example]:
    """Caption -> video. Negatives: the reversed twin, then another colour, then another lane."""
    out = []
    for clip in _clips(ctx, n):
        color, shape, direction, lane, size = clip
        other_color: Combo = ctx.rng.choice([c for c in ctx.scenes.others if c[1] == shape and c[0] != color])
        near = [(color, shape, OPPOSITE[direction], lane, size), (*other_color, direction, lane, size),
                (color, shape, direction, (lane + 1) % 3, size)]
        shown = [clip]

        def make(c: Clip, shown=shown) -> Side:
            shown.append(c)
            return video_side(ctx, c)

        def extra(clip=clip) -> Side:
            combo = ctx.scenes.other(((clip[0], clip[1]),))
            return make((*combo, ctx.rng.choice(DIRECTIONS), ctx.rng.randrange(3), ctx.scenes.size()))

        negatives = fill(ctx, [lambda c=c: make(c) for c in near], extra)
        out.append(Example(Side(text=caption(clip), instruction=T2V_INSTRUCTION), video_side(ctx, clip),
                           negatives, _meta(*shown, caption=caption(clip))))
    return out


def direction_questions(ctx: Ctx, n: int) -> list[Example]:
    """Video + "In which direction does the object move?" -> left / right / up / down."""
    out = []
    for clip in _clips(ctx, n):
        direction = clip[2]
        options = [OPPOSITE[direction], *[d for d in DIRECTIONS if d not in (direction, OPPOSITE[direction])]]
        query = video_side(ctx, clip)
        query.text, query.instruction = "In which direction does the object move?", VQA_INSTRUCTION
        out.append(Example(query, Side(text=direction), [Side(text=d) for d in options[: ctx.negatives]],
                           _meta(clip, answer=direction)))
    return out
