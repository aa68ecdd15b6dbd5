"""How demanding a cell's prompt is, so the report can set crash rate against it.

`measure` returns:

- `complexity_prompt_tokens`: the rendered prompt (persona + template + question + context), in tokens.
- `complexity_context_tokens`: the context alone, in tokens.
- `complexity_sections`: sections the template requires.
- `complexity_word_constraints`: sections with a declared word range.
- `complexity_instructions`: instructions the template gives: the `instructions:` count of its header
  when declared, else counted (see `count_instructions`).
- `complexity_persona_words`: the persona's length in words.

Tokens are counted with the model's tokenizer when the caller passes one (`count_tokens`); without it,
the estimate is the number of whitespace-separated words (`len(text.split())`). That undercounts subword
tokens (English prose runs about 1.3 tokens per word with Llama-style tokenizers) but orders prompts the
same way, which is what binning by prompt length needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.spec import TemplateInfo

from runner.spec import HEADER_RE

_JINJA_RE = re.compile(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", re.S)
_LIST_ITEM_RE = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]+\S", re.M)
_SENTENCE_RE = re.compile(r"[^.!?\n]+[.!?]?")
# Sentences opening with one of these verbs (or a "you must/should" phrasing) are read as instructions.
IMPERATIVE_VERBS = frozenset(
    "answer avoid base begin build cite condense consider create describe divide do don't end explain "  # noqa: SIM905
    "follow focus give include keep lean list make mention never note provide put quote reply respond "
    "read return split start state summarise summarize take use write".split()
)
_MODAL_RE = re.compile(r"\byou\s+(?:must|should|need\s+to|have\s+to|may\s+not|can\s+not|cannot)\b", re.I)


def whitespace_tokens(text: str) -> int:
    """The token estimate used without a tokenizer: whitespace-separated words."""
    return len(text.split())


def count_instructions(template_text: str) -> int:
    """Instructions in a template's own text (header and Jinja tags removed): its numbered or bulleted list
    items when it has any, else its sentences that read as imperatives (starting with a verb such as
    "Write" or "Keep", or saying "you must/should")."""
    text = _JINJA_RE.sub(" ", HEADER_RE.sub("", template_text))
    items = _LIST_ITEM_RE.findall(text)
    if items:
        return len(items)
    n = 0
    for sentence in _SENTENCE_RE.findall(text):
        first = re.match(r"\W*([A-Za-z']+)", sentence)
        if (first and first.group(1).lower() in IMPERATIVE_VERBS) or _MODAL_RE.search(sentence):
            n += 1
    return n


def measure(
    prompt: str,
    context: str,
    template: TemplateInfo,
    persona: str,
    count_tokens: Callable[[str], int] | None,
) -> dict[str, float]:
    """Complexity metrics of one cell's prompt (see the module docstring)."""
    count = count_tokens or whitespace_tokens
    instructions = template.instructions
    if instructions is None:
        instructions = count_instructions(template.text)
    return {
        "complexity_prompt_tokens": float(count(prompt)),
        "complexity_context_tokens": float(count(context)) if context else 0.0,
        "complexity_sections": float(len(template.sections)),
        "complexity_word_constraints": float(sum(s.words is not None for s in template.sections)),
        "complexity_instructions": float(instructions),
        "complexity_persona_words": float(len(persona.split())),
    }
