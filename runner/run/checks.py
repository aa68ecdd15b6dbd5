"""Per-cell output checks: did the answer keep the template's shape, and did it keep the POV's edge?

`evaluate` returns metrics named `check_*` (numbers, logged on the cell's child run) and tags named
`check.<name>` = `pass` | `fail`. A check that cannot apply is absent rather than a vacuous pass, so pass
rates in the report count only the cells a check is meaningful for:

- `sections` (`check_sections_present`, `check_sections_missing`): every section the template declares
  is in the answer. A section with `heading: false` is the whole answer (or, next to headed sections, the
  text before the first heading). Absent when the template declares no sections.
- `words` (`check_words_<section slug>`, `check_words_ok`): each declared word range holds, widened by
  `checks.word_tolerance`; a missing section counts as 0 words. Absent when no section declares a range.
- `duplication` (`check_dup_cosine`, `check_dup_overlap`, `check_duplicated`): the highest pairwise
  similarity between sections, by embedding cosine and by word-trigram containment (shared trigrams over
  the smaller section's trigrams, so an opinion that copies half of the summary still scores high). This
  is the notebook's failure where the "Opinion" repeated the "Context Summary". Needs two sections.
- `idk` (`check_idk`): the answer, or one of its sections, is just "I don't know". `check.idk=pass` means
  the model did answer.
- `pov_retention` (`check_pov_answer`, `check_pov_context`, `check_pov_retention`): the POV score (L2
  norm of the cosines to the POV statements) of the answer over the mean POV score of its context chunks:
  1.0 keeps the context's edge, well below 1 sanded it off. The answer is scored in pieces of at most
  `ANSWER_PIECE_WORDS` words (the mean over pieces), because the small embedders truncate long input and
  the context chunks are of that size too.
- `degenerate` (`check_degenerate`, `check_distinct_trigram_ratio`, `check_window_trigram_ratio`): empty
  output, or a repetition loop: a distinct word-trigram ratio below `checks.repetition_ratio` over the whole
  answer, or below `checks.loop_window_ratio` in its worst window of `LOOP_WINDOW_TOKENS` tokens (a small
  model often writes sense, then falls into a loop that runs to the token limit: over the whole answer the
  loop is diluted; a loop longer than the window shows in the whole-answer ratio instead).
- `copied` (`check_copied_share`): the share of the answer's word 8-grams found verbatim in its context. At
  `checks.copied_share` or more the model pasted the passages instead of answering (and its POV retention
  is then the context's own). Absent when the answer has no 8-gram.

Embedding-based values are skipped (absent) when `embed` is None. A crashed cell (output None) gets none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from runner.spec import Checks, Section, TemplateInfo

Embed = Callable[[list[str]], "np.ndarray"]

CHECK_TAG_PREFIX = "check."
"""Each check's verdict is a tag `check.<name>`; the tracker stores it as it is (runner.tracking.schema)."""
CHECK_PASS = "pass"
CHECK_FAIL = "fail"

ANSWER_PIECE_WORDS = 180
"""Longest piece of an answer embedded at once, in words (the corpus chunk size)."""
IDK_MAX_WORDS = 12
"""An "I don't know" with at most this many words around it is a refusal, not an answer that mentions it."""
MIN_TRIGRAMS = 8
"""Shorter answers are too short to call a repetition loop."""
LOOP_WINDOW_TOKENS = 48
"""Width of the window a repetition loop is looked for in: a loop of up to ~16 tokens repeats 3 times in it."""
COPY_NGRAM = 8
"""Word n-grams this long shared with the context are copied text, not a shared phrase."""

WORD_RE = re.compile(r"\w+(?:['’\-]\w+)*")
TOKEN_RE = re.compile(r"\w+|[^\w\s]+")
IDK_RE = re.compile(r"\bi\s+(?:don['’]?t|do\s+not)\s+know\b", re.I)
_MARKUP_RE = re.compile(r"^[\s#*_>\-]+|[\s*_:]+$")


def slug(title: str) -> str:
    """`Context Summary` -> `context_summary`, for metric names."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "section"


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


@dataclass(frozen=True)
class Found:
    section: Section
    text: str
    present: bool


def _heading_re(title: str) -> re.Pattern[str]:
    # A heading line: optional markdown hashes / bold, the title, optional colon, optional closing bold.
    # The body may continue on the same line ("## Opinion: I think ..."). Without any markup or colon,
    # only a line holding the bare title counts, so a sentence that starts with "Opinion is" is not one.
    # Words of a title may run together: small models write "#ContextSummary:".
    t = r"\s*".join(re.escape(w) for w in title.split())
    return re.compile(
        rf"^[ \t]*(?:(?P<mark>#{{1,6}}[ \t]*|\*\*|__)[ \t]*)?(?P<title>{t})[ \t]*(?P<tail>\*\*|__)?[ \t]*"
        rf"(?P<colon>:)?(?:[ \t]*(?:\*\*|__))?(?P<rest>[^\n]*)$",
        re.I | re.M,
    )


def _headings(output: str, sec: Section) -> list[re.Match[str]]:
    return [
        m
        for m in _heading_re(sec.title).finditer(output)
        if m.group("mark") or m.group("colon") or not m.group("rest").strip()
    ]


def split_sections(output: str, sections: tuple[Section, ...]) -> list[Found]:
    """Cut an answer into the template's sections. A headed section starts at its first heading and runs
    to the next heading of any section (a repeated heading ends it too, so a loop is not counted twice)."""
    matches = {i: _headings(output, sec) for i, sec in enumerate(sections) if sec.heading}
    boundaries = sorted({m.start() for ms in matches.values() for m in ms})
    found: dict[int, Found] = {}
    for i, ms in matches.items():
        if ms:
            end = next((b for b in boundaries if b > ms[0].start()), len(output))
            found[i] = Found(sections[i], output[ms[0].start("rest") : end].strip(), True)
        else:
            found[i] = Found(sections[i], "", False)
    first = boundaries[0] if boundaries else len(output)
    for i, sec in enumerate(sections):
        if not sec.heading:
            text = output[:first].strip()
            found[i] = Found(sec, text, bool(words(text)))
    return [found[i] for i in range(len(sections))]


def distinct_trigram_ratio(text: str) -> float:
    """Distinct word trigrams over all trigrams (1.0 when there are fewer than three tokens)."""
    toks = [t.lower() for t in TOKEN_RE.findall(text)]
    grams = list(zip(toks, toks[1:], toks[2:], strict=False))
    return len(set(grams)) / len(grams) if grams else 1.0


def window_trigram_ratio(text: str, window: int = LOOP_WINDOW_TOKENS) -> float:
    """The lowest distinct word-trigram ratio over windows of `window` tokens (half-window steps); the
    whole-text ratio when the text is shorter than one window."""
    toks = [t.lower() for t in TOKEN_RE.findall(text)]
    if len(toks) <= window:
        return distinct_trigram_ratio(text)
    grams = list(zip(toks, toks[1:], toks[2:], strict=False))
    width = window - 2
    starts = range(0, len(grams) - width + 1, max(width // 2, 1))
    return min(len(set(grams[i : i + width])) / width for i in [*starts, len(grams) - width])


def copied_share(answer: str, context_texts: list[str], n: int = COPY_NGRAM) -> float | None:
    """Share of the answer's word n-grams that occur verbatim in the context; None without an n-gram."""
    w = [x.lower() for x in words(answer)]
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return None
    seen: set[tuple[str, ...]] = set()
    for text in context_texts:
        c = [x.lower() for x in words(text)]
        seen.update(tuple(c[i : i + n]) for i in range(len(c) - n + 1))
    return sum(g in seen for g in grams) / len(grams)


def reused_spans(answer: str, text: str, n: int = COPY_NGRAM) -> tuple[float, list[tuple[int, int]]]:
    """How much of `answer` came from `text`, as `copied_share` counts it for the whole context: the share
    of the answer's word n-grams found in `text`, and the character spans of `text` those shared n-grams
    cover (merged, in order), for a reader to highlight. (0.0, []) when the answer has no n-gram."""
    a = [x.lower() for x in words(answer)]
    grams = {tuple(a[i : i + n]) for i in range(len(a) - n + 1)}
    total = len(a) - n + 1
    if total <= 0:
        return 0.0, []
    found = list(WORD_RE.finditer(text))
    t = [m.group().lower() for m in found]
    shared = {tuple(t[i : i + n]) for i in range(len(t) - n + 1)} & grams
    share = sum(tuple(a[i : i + n]) in shared for i in range(total)) / total
    spans: list[tuple[int, int]] = []
    for i in range(len(t) - n + 1):
        if tuple(t[i : i + n]) not in shared:
            continue
        start, end = found[i].start(), found[i + n - 1].end()
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return share, spans


def _trigrams(text: str) -> set[tuple[str, ...]]:
    w = [x.lower() for x in words(text)]
    return set(zip(w, w[1:], w[2:], strict=False))


def overlap_ratio(a: str, b: str) -> float:
    """Word trigrams the two texts share, over the trigrams of the smaller one."""
    ta, tb = _trigrams(a), _trigrams(b)
    small = min(len(ta), len(tb))
    return len(ta & tb) / small if small else 0.0


def is_idk(text: str) -> bool:
    """Just "I don't know" (markup and a short apology around it allowed)."""
    body = _MARKUP_RE.sub("", text.strip())
    return bool(IDK_RE.search(body)) and len(words(body)) <= IDK_MAX_WORDS


def _pieces(text: str) -> list[str]:
    w = text.split()
    return [" ".join(w[i : i + ANSWER_PIECE_WORDS]) for i in range(0, len(w), ANSWER_PIECE_WORDS)]


def _pf(ok: bool) -> str:
    return CHECK_PASS if ok else CHECK_FAIL


def evaluate(
    output: str | None,
    template: TemplateInfo,
    context_texts: list[str],
    pov_statements: list[str],
    checks: Checks,
    embed: Embed | None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Every check of one cell's answer: metrics `check_*` and tags `check.<name>` = pass|fail."""
    if output is None:
        return {}, {}
    m: dict[str, float] = {}
    tags: dict[str, str] = {}
    sections = template.sections
    found = split_sections(output, sections) if sections else []

    if sections:
        missing = sum(not f.present for f in found)
        m["check_sections_present"] = float(missing == 0)
        m["check_sections_missing"] = float(missing)
        tags[CHECK_TAG_PREFIX + "sections"] = _pf(missing == 0)
    ranged = [f for f in found if f.section.words]
    if ranged:
        ok_all = True
        tol = checks.word_tolerance
        for f in ranged:
            lo, hi = f.section.words  # type: ignore[misc]
            n = len(words(f.text)) if f.present else 0
            ok = lo * (1 - tol) <= n <= hi * (1 + tol)
            ok_all &= ok
            m[f"check_words_{slug(f.section.title)}"] = float(n)
        m["check_words_ok"] = float(ok_all)
        tags[CHECK_TAG_PREFIX + "words"] = _pf(ok_all)

    idk = is_idk(output) or any(f.present and is_idk(f.text) for f in found)
    m["check_idk"] = float(idk)
    tags[CHECK_TAG_PREFIX + "idk"] = _pf(not idk)

    ratio = distinct_trigram_ratio(output)
    window = window_trigram_ratio(output)
    n_grams = max(len(TOKEN_RE.findall(output)) - 2, 0)
    looping = ratio < checks.repetition_ratio or window < checks.loop_window_ratio
    degenerate = not words(output) or (n_grams >= MIN_TRIGRAMS and looping)
    m["check_distinct_trigram_ratio"] = ratio
    m["check_window_trigram_ratio"] = window
    m["check_degenerate"] = float(degenerate)
    tags[CHECK_TAG_PREFIX + "degenerate"] = _pf(not degenerate)

    copied = copied_share(output, context_texts)
    if copied is not None:
        m["check_copied_share"] = copied
        tags[CHECK_TAG_PREFIX + "copied"] = _pf(copied < checks.copied_share)

    present = [f for f in found if f.present and words(f.text)]
    pairs = list(combinations(range(len(present)), 2))
    if pairs:
        m["check_dup_overlap"] = max(overlap_ratio(present[i].text, present[j].text) for i, j in pairs)
    vecs = (
        _embed_all(embed, present, output, context_texts, pov_statements) if embed and words(output) else None
    )
    if pairs and vecs is not None:
        sec = vecs["sections"]
        m["check_dup_cosine"] = max(float(sec[i] @ sec[j]) for i, j in pairs)
    if pairs:
        dup = m["check_dup_overlap"] >= checks.duplication_overlap or (
            m.get("check_dup_cosine", 0.0) >= checks.duplication_cosine
        )
        m["check_duplicated"] = float(dup)
        tags[CHECK_TAG_PREFIX + "duplication"] = _pf(not dup)

    if vecs is not None and "context" in vecs and "pov" in vecs:
        # The very score stage 3 ranked the chunks by, so the ratio compares like with like.
        from runner.retrieval import pov_scores

        answer = float(pov_scores(vecs["answer"], vecs["pov"]).mean())
        context = float(pov_scores(vecs["context"], vecs["pov"]).mean())
        m["check_pov_answer"] = answer
        m["check_pov_context"] = context
        if context > 0:
            m["check_pov_retention"] = answer / context
            tags[CHECK_TAG_PREFIX + "pov_retention"] = _pf(answer / context >= checks.pov_retention)
    return m, tags


def _embed_all(
    embed: Embed, present: list[Found], output: str, context_texts: list[str], pov_statements: list[str]
) -> dict[str, Any]:
    """One embed call for everything a cell needs (the caller's cache dedupes across cells)."""
    import numpy as np

    # The answer is scored without its headings: they are the template's words, not the model's.
    answer = "\n\n".join(f.text for f in present) if present else output
    groups = {
        "sections": [f.text for f in present] if len(present) > 1 else [],
        "answer": _pieces(answer),
        "context": [t for t in context_texts if t.strip()],
        "pov": [s for s in pov_statements if s.strip()],
    }
    unique = list(dict.fromkeys(t for texts in groups.values() for t in texts))
    if not unique:
        return {}
    vectors = np.asarray(embed(unique), dtype=np.float32)
    index = {t: i for i, t in enumerate(unique)}
    return {k: vectors[[index[t] for t in texts]] for k, texts in groups.items() if texts}
