"""A PNG of a run's curves (training loss and evaluation scores against steps), drawn with PIL only.

Two panels share the step axis: the per-step loss (thin) with its moving average (thick), and the
Overall evaluation score with the Image / Video / VisDoc means when they were recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from omniret.training.logbook import EVAL_CSV, METRICS_CSV, read_rows

WIDTH, PANEL, MARGIN = 900, 300, 60
COLOURS = {"loss": (160, 190, 230), "loss (avg)": (30, 80, 170), "Overall": (200, 40, 40),
           "Image": (40, 140, 60), "Video": (150, 90, 20), "VisDoc": (120, 60, 160)}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _series(rows: list[dict[str, str]], key: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def _panel(draw: ImageDraw.ImageDraw, top: int, title: str, lines: dict[str, list[tuple[float, float]]],
           x_range: tuple[float, float]) -> None:
    left, right, bottom = MARGIN, WIDTH - 20, top + PANEL - 40
    draw.rectangle([left, top + 20, right, bottom], outline=(0, 0, 0))
    draw.text((left, top + 4), title, fill=(0, 0, 0))
    points = [p for series in lines.values() for p in series]
    if not points:
        draw.text((left + 10, top + 40), "no data", fill=(120, 120, 120))
        return
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    x_lo, x_hi = x_range

    def at(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_lo) / max(x_hi - x_lo, 1e-9)
        fy = (y - y_lo) / (y_hi - y_lo)
        return left + fx * (right - left), bottom - fy * (bottom - top - 20)

    for frac in (0.0, 0.5, 1.0):
        y = y_lo + frac * (y_hi - y_lo)
        draw.text((4, at(x_lo, y)[1] - 6), f"{y:.3g}", fill=(0, 0, 0))
        x = x_lo + frac * (x_hi - x_lo)
        draw.text((at(x, y_lo)[0] - 10, bottom + 4), f"{x:.0f}", fill=(0, 0, 0))
    for i, (name, series) in enumerate(lines.items()):
        colour = COLOURS.get(name, (0, 0, 0))
        coords = [at(x, y) for x, y in series]
        if len(coords) == 1:
            x, y = coords[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        elif coords:
            draw.line(coords, fill=colour, width=3 if name != "loss" else 1)
        draw.text((right - 110, top + 24 + 12 * i), name, fill=colour)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``run_dir``'s metrics.csv / eval.csv into ``out`` (default ``run_dir/curves.png``)."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    metrics, evals = read_rows(run_dir / METRICS_CSV), read_rows(run_dir / EVAL_CSV)
    loss = _series(metrics, "loss")
    steps = [x for x, _ in loss] + [x for x, _ in _series(evals, "Overall")]
    x_range = (min(steps, default=0.0), max(steps, default=1.0))
    image = Image.new("RGB", (WIDTH, 2 * PANEL), "white")
    draw = ImageDraw.Draw(image)
    window = max(1, len(loss) // 20)
    smooth = list(zip([x for x, _ in loss], moving_average([y for _, y in loss], window), strict=True))
    _panel(draw, 0, "training loss", {"loss": loss, "loss (avg)": smooth}, x_range)
    _panel(draw, PANEL, "evaluation score", {k: _series(evals, k) for k in ("Overall", "Image", "Video", "VisDoc")
                                             if _series(evals, k)}, x_range)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
