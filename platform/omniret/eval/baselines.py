"""Reference scorers that every results table carries, so it shows what chance looks like.

- ``chance``: a constant scorer; with the "expected" tie rule its score is exactly the chance level
  (e.g. hit@1 = 1 / candidates).
- ``text_overlap``: the number of distinct words (lower-cased, minus a few stop words) a query's text
  shares with a candidate's text, where a candidate's text is its own text plus, for a PDF page,
  the page's text layer. Instructions are ignored. It applies only to datasets whose candidates have
  text (labels, answers, pages); on the others it is reported as not applicable.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from omniret.data.schema import Side
from omniret.eval.dataset import EvalDataset, Scorer

STOPWORDS = frozenset("a an the of in on at to and or is are was were be by for with from as it its this that "
                      "which what how many where when who do does did there".split())
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in STOPWORDS)


@lru_cache(maxsize=256)
def _pdf_pages(path: str) -> tuple[str, ...]:
    import pymupdf

    try:
        with pymupdf.open(path) as doc:
            return tuple(page.get_text("text") for page in doc)
    except Exception:  # an unreadable PDF simply has no text here; the embedder reports it
        return ()


def side_text(side: Side) -> str:
    text = side.text or ""
    if side.page is not None and not isinstance(side.page.path, bytes):
        pages = _pdf_pages(str(side.page.path))
        if side.page.page < len(pages):
            text = f"{text} {pages[side.page.page]}"
    return text


def chance(ds: EvalDataset) -> Scorer:
    return lambda q, cands: np.zeros(len(cands))


def text_overlap(ds: EvalDataset) -> Scorer | None:
    """The overlap scorer, or None when no candidate of ``ds`` has text."""
    candidate_words = [words(side_text(c)) for c in ds.candidates]
    if not any(candidate_words):
        return None
    query_words = [words(q.text or "") for q in ds.queries]
    return lambda q, cands: np.array([len(query_words[q] & candidate_words[c]) for c in cands], dtype=np.float64)


BASELINES = {"chance": chance, "text_overlap": text_overlap}
