"""Generated document retrieval: multi-page PDF stock reports and questions answerable from one page.

Each report has an overview page naming the products it covers and one page per product (a colour x
shape at a site) with three facts: units in stock, shipping day, dock. A question asks one fact of
one product: that product's page is fully relevant (grade 2), its report's overview page partly
(grade 1). Pages of the same product at other sites, and of other products at the same site, are the
near misses. Every page of the split goes into ``ctx.pool``, the corpus questions are ranked against.
"""

from __future__ import annotations

import itertools

from omniret.data.schema import Side
from omniret.data.synthetic.common import Ctx, Example, fill
from omniret.data.synthetic.scenes import PLURALS
from omniret.items import PageRef
from omniret.media.synth import write_pdf

QUERY_INSTRUCTION = "Find a document page that answers the question."
PAGE_INSTRUCTION = "Understand the content of the provided document page."
SITES = ("north", "south", "east", "west", "harbour", "hill")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
QUESTIONS = (
    ("units", "How many {product} does the {site} site keep in stock?"),
    ("day", "On which day do {product} from the {site} site ship?"),
    ("dock", "From which dock do {product} at the {site} site leave?"),
)


def _product(color: str, shape: str) -> str:
    return f"{color} {PLURALS[shape]}"


def _page_text(product: str, site: str, facts: dict) -> str:
    return (f"{product.capitalize()} at the {site} site.\n\nThe {site} site keeps {facts['units']} {product} in "
            f"stock. {product.capitalize()} from the {site} site ship on {facts['day']}. They leave from dock "
            f"{facts['dock']}.")


def _overview(entities: list[tuple[str, str, str]]) -> str:
    listed = "; ".join(f"{_product(c, s)} at the {site} site" for c, s, site in entities)
    return (f"This report lists the stock of {len(entities)} products: {listed}. Each following page "
            "covers one of them: units in stock, shipping day and dock.")


def document_retrieval(ctx: Ctx, n: int) -> list[Example]:
    per_doc = max(1, ctx.pages_per_doc - 1)
    entities = [(c, s, site) for (c, s), site in itertools.product(ctx.scenes.targets, SITES)]
    ctx.rng.shuffle(entities)
    page_of: dict[tuple[str, str, str], int] = {}  # entity -> index in ctx.pool
    overview_of: dict[tuple[str, str, str], int] = {}
    facts = {e: {"units": ctx.rng.randint(10, 99), "day": ctx.rng.choice(DAYS), "dock": ctx.rng.randint(1, 9)}
             for e in entities}
    for number, start in enumerate(range(0, len(entities), per_doc), start=1):
        chunk = entities[start:start + per_doc]
        texts = [_overview(chunk)] + [_page_text(_product(c, s), site, facts[(c, s, site)]) for c, s, site in chunk]
        pdf = ctx.media.file(".pdf", lambda path, texts=texts, number=number: write_pdf(
            path, texts, title=f"Stock report {number}"), note=texts)
        sides = [Side(page=PageRef(pdf, i), instruction=PAGE_INSTRUCTION) for i in range(len(texts))]
        for entity, index in zip(chunk, range(1, len(texts)), strict=True):
            page_of[entity] = len(ctx.pool) + index
            overview_of[entity] = len(ctx.pool)
        ctx.pool.extend(sides)
    questions = [(e, kind, template) for e in entities for kind, template in QUESTIONS]
    ctx.rng.shuffle(questions)
    if ctx.split == "eval":
        n = min(n, len(questions))
    out = []
    for i in range(n):
        (color, shape, site), kind, template = questions[i % len(questions)]
        entity = (color, shape, site)
        text = template.format(product=_product(color, shape), site=site)
        near = [e for e in entities if e != entity and (e[:2] == entity[:2] or e[2] == site)]
        near.sort(key=lambda e: (e[:2] != entity[:2], e))
        others = [i for i in range(len(ctx.pool)) if i not in (page_of[entity], overview_of[entity])]
        negatives = fill(ctx, [lambda e=e: ctx.pool[page_of[e]] for e in near],
                         lambda others=others: ctx.pool[ctx.rng.choice(others)])
        qrels = {page_of[entity]: 2, overview_of[entity]: 1}
        combos = sorted({entity[:2], *(e[:2] for e in near[: ctx.negatives])})
        out.append(Example(Side(text=text, instruction=QUERY_INSTRUCTION), ctx.pool[page_of[entity]], negatives,
                           {"target": [color, shape], "combos": [list(c) for c in combos],
                            "site": site, "fact": kind, "answer": facts[entity][kind], "qrels": qrels}))
    return out
