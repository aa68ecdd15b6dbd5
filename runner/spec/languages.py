"""The languages a corpus may declare (`corpus.language`), and the unit each one's chunks are sized in.

Text with spaces between words is sized in words (`chunking.max_words`), as it always was. Text without them
is sized in tokens (`chunking.max_tokens`): Japanese in the morphemes of the Sudachi segmenter (the `ja`
extra), Chinese in characters (a Han character is roughly a word, and no segmenter is needed). `auto`
decides per document from its script (runner.retrieval.language).

This table lives in the spec stage so that `pov validate` can refuse an unknown code, or a language whose
segmenter is not installed, without importing the retrieval stage.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

Unit = Literal["words", "morphemes", "characters"]


@dataclass(frozen=True)
class Language:
    unit: Unit
    """What `max_words` / `max_tokens` count for this language's text."""
    requires: tuple[str, ...] = ()
    """Modules the unit needs (imported only when a document is cut)."""
    extra: str | None = None
    """The pov-runner extra that installs them."""


AUTO = "auto"
_SPACED = [
    "en",
    "de",
    "es",
    "fr",
    "it",
    "nl",
    "pt",
    "ru",
    "pl",
    "sv",
    "da",
    "no",
    "fi",
    "tr",
    "id",
    "vi",
    "ko",
]
LANGUAGES: dict[str, Language] = {
    **{code: Language("words") for code in _SPACED},
    "ja": Language("morphemes", ("sudachipy", "sudachidict_core"), "ja"),
    "zh": Language("characters"),
}
"""ISO 639-1 codes with their unit. Every space-separated language chunks as English does; add its code here."""


ALIASES = {
    "jp": "ja",
    "jpn": "ja",
    "japanese": "ja",
    "cn": "zh",
    "chinese": "zh",
    "english": "en",
    "kr": "ko",
}
"""Country codes and names written for a language code: what `pov validate` suggests for them."""


def language_codes() -> list[str]:
    return [AUTO, *LANGUAGES]


def suggestion(code: str) -> str:
    """` (did you mean 'ja'?)` for a name or country code of a known language, else ``."""
    known = ALIASES.get(code.lower())
    return f" (did you mean {known!r}?)" if known else ""


def missing_modules(code: str) -> list[str]:
    """The modules language `code` needs that are not installed (found without importing them)."""
    lang = LANGUAGES.get(code)
    return [m for m in lang.requires if importlib.util.find_spec(m) is None] if lang else []


def install_hint(code: str) -> str:
    lang = LANGUAGES[code]
    return (
        f"pip install 'pov-runner[{lang.extra}]'" if lang.extra else f"pip install {' '.join(lang.requires)}"
    )
