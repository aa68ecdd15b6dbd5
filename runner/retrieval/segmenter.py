"""Tokens of text written without spaces: what `chunking.max_tokens` counts.

A `Segmenter` cuts text into tokens whose concatenation is the text (the spaces after a token belong to
it), so a window of tokens is a piece of the original text. Whitespace is never a token of its own, and a run
of digits (`2022`, `二〇二二`) is one token, as a number is one word in English.

- `ja`: morphemes of Sudachi (`sudachipy` with the `sudachidict_core` dictionary: `pip install
  'pov-runner[ja]'`), in its default mode C (the longest units: 安全保障 is one token). The dictionary is
  loaded once per process, on the first Japanese document; the segmenter reads at most MAX_PIECE characters
  at a time (Sudachi refuses inputs of more than 49,149 bytes), so a piece boundary may split one word.
- `zh`: characters; a run of Latin letters or digits counts as one token.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Protocol

from runner.errors import UserError
from runner.spec import install_hint

MAX_PIECE = 12_000
"""Characters per Sudachi call: at most 4 bytes each in UTF-8, within its 49,149-byte limit."""
_DIGITS = re.compile(r"[0-9０-９〇一二三四五六七八九十百千万億兆]+")
_CHAR_TOKEN = re.compile(r"[A-Za-z0-9_]+\s*|\S\s*|\s+")


class Segmenter(Protocol):
    language: str

    def tokens(self, text: str) -> list[str]:
        """`text` cut into tokens; `"".join` of them is `text` (leading whitespace joins the first)."""
        ...

    def count(self, text: str) -> int:
        """len(tokens(text))."""
        ...


def _merge(surfaces: list[str]) -> list[str]:
    """Whitespace joins the token before it (leading whitespace the first), digits the digits before them."""
    out: list[str] = []
    lead = ""
    for s in surfaces:
        if not out and s.isspace():
            lead += s
        elif out and (s.isspace() or (_DIGITS.fullmatch(s) and _DIGITS.fullmatch(out[-1]))):
            out[-1] += s
        else:
            out.append(s)
    if out:
        out[0] = lead + out[0]
    return out if out or not lead else [lead]


@functools.lru_cache(maxsize=1)
def _sudachi() -> Any:
    try:
        import sudachipy
    except ModuleNotFoundError:
        raise UserError(
            f"Japanese text is chunked in Sudachi morphemes, which needs the 'sudachipy' package: "
            f"{install_hint('ja')}"
        ) from None
    try:
        dictionary = sudachipy.Dictionary()  # sudachidict_core, found by the package itself
    except Exception as e:  # sudachipy raises its own error type when no dictionary package is installed
        raise UserError(
            f"Sudachi found no dictionary ({e.__class__.__name__}: {str(e)[:200]}): {install_hint('ja')}"
        ) from None
    return dictionary.tokenizer(fields={"surface"})


class SudachiSegmenter:
    language = "ja"

    def __init__(self) -> None:
        self._tokenizer = _sudachi()

    def tokens(self, text: str) -> list[str]:
        surfaces: list[str] = []
        for i in range(0, len(text), MAX_PIECE):
            surfaces += [m.surface() for m in self._tokenizer.tokenize(text[i : i + MAX_PIECE])]
        return _merge(surfaces)

    def count(self, text: str) -> int:
        return len(self.tokens(text))


class CharacterSegmenter:
    language = "zh"

    def tokens(self, text: str) -> list[str]:
        return _merge(_CHAR_TOKEN.findall(text))

    def count(self, text: str) -> int:
        return len(self.tokens(text))


@functools.cache
def segmenter(language: str) -> Segmenter:
    """The segmenter of a language chunked in tokens (`ja`, `zh`)."""
    if language == "ja":
        return SudachiSegmenter()
    if language == "zh":
        return CharacterSegmenter()
    raise ValueError(f"no segmenter for language {language!r}")
