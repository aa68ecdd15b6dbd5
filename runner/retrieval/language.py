"""Which language a document is written in (by its script), and where its sentences end.

Chunk sizes mean something only in a unit the text has (runner.spec.languages): words where words are
separated by spaces, morphemes for Japanese, characters for Chinese. With `corpus.language: auto`, each
document is classified by its characters: when CJK characters (kana and Han) make up at least a tenth of its
non-space characters, it is Japanese if kana are at least 5% of them (Japanese prose writes its particles and
endings in kana; Chinese has none), else Chinese; otherwise it is text with spaces and chunks in words
exactly as before there was a choice. A bilingual document (an English paragraph and its Japanese rendering,
as in the notebook this tool comes from) is Japanese by that measure, and the segmenter counts its English
words as one token each.

Sentences end at 。！？ (and their ASCII and full-width forms) with any closing quotes or brackets after them,
at a line break (Japanese text often puts one sentence or item per line), and, for the English inside a
bilingual document, at `.`, `!` or `?` followed by a space. Every function here keeps the text it is given:
joining the pieces gives it back, character for character.
"""

from __future__ import annotations

import re

from runner.spec import AUTO, LANGUAGES

_KANA = re.compile(r"[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_CHARS = r"\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = re.compile(f"[{_CJK_CHARS}]")
CJK_RUN = re.compile(f"[{_CJK_CHARS}]+")
_HIRAGANA = re.compile(r"[\u3040-\u309f]")
CJK_SHARE = 0.1
"""Share of a document's non-space characters that must be CJK for it to be chunked in tokens."""
KANA_SHARE = 0.05
"""Share of its CJK characters that must be kana for it to be Japanese rather than Chinese."""

# A sentence: up to and including its end mark and what closes it, plus the spaces after it.
_SENTENCE_END = re.compile(
    r"[。！？!?．｡][」』）)\]】〉》”’\"']*[ \t\u3000]*\n?"  # Japanese (and !? anywhere)
    r"|(?<=[^\s.])[.][\"')\]”’]*[ \t]+"  # an English full stop before a space (not `...`)
    r"|\n"  # a line break
)


def cjk_count(text: str) -> int:
    """Kana and Han characters in `text`."""
    return len(_CJK.findall(text))


def hiragana_count(text: str) -> int:
    return len(_HIRAGANA.findall(text))


def detect(text: str) -> str | None:
    """The code of a language chunked in tokens (`ja`, `zh`) that `text` is written in, or None for text
    with spaces between its words (chunked in words)."""
    cjk = cjk_count(text)
    if not cjk:
        return None
    visible = len(text) - sum(c.isspace() for c in text)
    if cjk < CJK_SHARE * visible:
        return None
    return "ja" if len(_KANA.findall(text)) >= KANA_SHARE * cjk else "zh"


def token_language(text: str, declared: str) -> str | None:
    """The language whose tokens size `text`'s chunks, or None for words: `declared` (corpus.language) unless
    it is `auto`, then what the document's script says."""
    if declared == AUTO:
        return detect(text)
    return declared if LANGUAGES[declared].unit != "words" else None


def sentences(text: str) -> list[str]:
    """`text` cut after each sentence end (see the module docstring); `"".join` of the result is `text`."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() > start:
            out.append(text[start : m.end()])
            start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out
