"""Generated text-only training pairs, for a text-only continued-training stage.

The pairs come from the stock-report world of the document task (``doc_tasks``): the query is one of
its questions about a product at a site, the positive is that entity's page text, and the hard
negatives are the page texts of the same product at another site and of another product at the same
site. No media: the rows are the text-pair format of :mod:`omniret.data.readers`. Run
``python -m omniret.data.synthetic.text_pairs --out FILE.jsonl`` to write them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

from omniret.data.synthetic.doc_tasks import DAYS, QUERY_INSTRUCTION, QUESTIONS, SITES, _page_text, _product
from omniret.media.synth import COLORS, SHAPES


def text_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows {id, query, instruction, positive, negatives} drawn with ``seed`` (the same rows every time)."""
    rng = random.Random(seed)
    entities = [(_product(c, s), site) for (c, s), site in itertools.product(itertools.product(COLORS, SHAPES), SITES)]
    facts = {e: {"units": rng.randint(10, 99), "day": rng.choice(DAYS), "dock": rng.randint(1, 9)} for e in entities}
    rows = []
    for i in range(n):
        product, site = rng.choice(entities)
        _, question = rng.choice(QUESTIONS)
        other_site = rng.choice([s for s in SITES if s != site])
        other_product = rng.choice([p for p, s in entities if s == site and p != product])
        rows.append({"id": str(i), "query": question.format(product=product, site=site),
                     "instruction": QUERY_INSTRUCTION,
                     "positive": _page_text(product, site, facts[(product, site)]),
                     "negatives": [_page_text(product, other_site, facts[(product, other_site)]),
                                   _page_text(other_product, site, facts[(other_product, site)])]})
    return rows


def write_text_pairs(path: str | Path, n: int, seed: int = 0) -> int:
    """Write ``n`` generated text pairs as JSONL; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = text_pairs(n, seed)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("-n", type=int, default=200, help="pairs to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {write_text_pairs(args.out, args.n, args.seed)} text pairs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
