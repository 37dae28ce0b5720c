"""The search service: BM25 retrieval over the generated corpus behind Search-R1's HTTP contract.

``POST /retrieve {"queries": [...], "topk": k, "return_scores": bool}`` answers
``{"result": [[doc, ...] per query]}`` where a doc is ``{"id", "contents"}`` (contents is
the quoted title, a newline and the text) or, with ``return_scores``, ``{"document": doc,
"score": s}``; ``GET /health`` reports the document count. Ranking is deterministic: ties
in score are broken by document index.
"""
from __future__ import annotations

import re
import sys
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandboxes.corpus import DEFAULT_SEED, Corpus, load_corpus
from sandboxes.services.http import error_response, json_body, json_error_handlers

MAX_QUERIES = 256
MAX_QUERY_CHARS = 2_000
MAX_TOPK = 100
DEFAULT_TOPK = 3
_TOKEN = re.compile(r"\w+")
_STOPWORDS = frozenset(STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without English stopwords (the same for documents and queries)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


class BM25Index:
    """A bm25s index over a corpus's documents with deterministic top-k."""

    def __init__(self, corpus: Corpus):
        self.contents = corpus.contents()
        self.ids = [d["id"] for d in corpus.docs]
        self._bm25 = bm25s.BM25()
        self._bm25.index([tokenize(c) for c in self.contents], show_progress=False)
        _stop_idle_tqdm_monitor()
        self._n = len(self.contents)
        self.fingerprint = corpus.fingerprint

    def __len__(self) -> int:
        return self._n

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(document index, score) of the ``k`` best documents, best first; empty if no query word is known."""
        token_ids = self._bm25.get_tokens_ids(tokenize(query))
        if not token_ids:
            return []
        scores = self._bm25.get_scores_from_ids(token_ids)
        k = min(k, self._n)
        top = np.argpartition(-scores, k - 1)[:k] if k < self._n else np.arange(self._n)
        top = top[np.lexsort((top, -scores[top]))]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]


def _stop_idle_tqdm_monitor() -> None:
    """Stop the monitor thread that bm25s's disabled progress bars leave running (a tqdm quirk).

    A disabled ``tqdm`` still starts tqdm's global monitor thread and never stops it; left
    alone it would outlive the embedded server that built the index.
    """
    tqdm_auto = sys.modules.get("tqdm.auto")  # what bm25s uses when tqdm is installed
    if tqdm_auto is None:
        return
    tqdm = tqdm_auto.tqdm
    with tqdm.get_lock():
        monitor = getattr(tqdm, "monitor", None)
        if monitor is not None and not tqdm._instances:
            tqdm.monitor = None
            monitor.exit()


def _parse_retrieve(body: Any) -> tuple[list[str], int, bool]:
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object {"queries": [...], "topk": k, "return_scores": bool}')
    unknown = sorted(set(body) - {"queries", "topk", "return_scores"})
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: queries, topk, return_scores")
    queries = body.get("queries")
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
        raise ValueError('"queries" must be a non-empty list of strings')
    if len(queries) > MAX_QUERIES or any(len(q) > MAX_QUERY_CHARS for q in queries):
        raise ValueError(f"at most {MAX_QUERIES} queries of at most {MAX_QUERY_CHARS} characters each")
    topk = body.get("topk", DEFAULT_TOPK)
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise ValueError(f'"topk" must be an integer in 1..{MAX_TOPK}')
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise ValueError('"return_scores" must be true or false')
    return queries, topk, return_scores


def create_search_app(corpus_seed: int = DEFAULT_SEED) -> Starlette:
    """The search service as an ASGI app (the index is built here, before serving)."""
    index = BM25Index(load_corpus(corpus_seed))

    async def retrieve(request: Request) -> JSONResponse:
        body = await json_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            queries, topk, return_scores = _parse_retrieve(body)
        except ValueError as e:
            return error_response(422, "validation_error", str(e))
        result = []
        for q in queries:
            hits = index.search(q, topk)
            docs = [{"id": index.ids[i], "contents": index.contents[i]} for i, _ in hits]
            result.append([{"document": d, "score": s} for d, (_, s) in zip(docs, hits)] if return_scores else docs)
        return JSONResponse({"result": result})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": "search", "documents": len(index),
                             "corpus": index.fingerprint})

    return Starlette(routes=[Route("/retrieve", retrieve, methods=["POST"]), Route("/health", health, methods=["GET"])],
                     exception_handlers=json_error_handlers())
