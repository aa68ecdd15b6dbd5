"""The retrieval stage: chunk and store a corpus in Chroma, then rank chunks in three stages (vector search,
query rerank, POV rerank) for each (question, POV set, k schedule).

    retriever = open_retriever(exp)          # ingests first (idempotent)
    results = retriever.retrieve([("japan-alliances", "security", (15, 10, 5))])

Heavy modules (torch, chromadb, sentence-transformers) are imported only when a retriever is used.
"""

from runner.retrieval.indexing import ingest
from runner.retrieval.ingest_report import Dropped, IngestReport, truncation_warning
from runner.retrieval.metrics import (
    BEST_MATCH_RANK,
    RELEVANCE_KEPT,
    RETRIEVAL_METRICS,
    STAGE_BOILERPLATE_SHARE,
    STAGE_TRUNCATED,
    STANCE_SPECIFICITY,
)
from runner.retrieval.retriever import (
    STAGES,
    AnyKey,
    ChromaRetriever,
    Key,
    RetrievalResult,
    Retriever,
    Stage,
    open_retriever,
)
from runner.retrieval.scoring import blend_scores, contrast_scores, cosine_scores, pov_scores, rank_desc
from runner.retrieval.store import Store

__all__ = [
    "BEST_MATCH_RANK",
    "RELEVANCE_KEPT",
    "RETRIEVAL_METRICS",
    "STAGES",
    "STAGE_BOILERPLATE_SHARE",
    "STAGE_TRUNCATED",
    "STANCE_SPECIFICITY",
    "AnyKey",
    "ChromaRetriever",
    "Dropped",
    "IngestReport",
    "Key",
    "RetrievalResult",
    "Retriever",
    "Stage",
    "Store",
    "blend_scores",
    "contrast_scores",
    "cosine_scores",
    "ingest",
    "open_retriever",
    "pov_scores",
    "rank_desc",
    "truncation_warning",
]
