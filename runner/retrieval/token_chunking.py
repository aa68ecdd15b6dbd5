"""Packing text without spaces into chunks of at most `max_tokens` tokens (runner.retrieval.segmenter).

The same shape as packing in words (runner.retrieval.chunking), in another unit, and cutting at sentence
ends instead of anywhere:
- whole paragraphs are packed up to `max_tokens`; a heading moves to the chunk it introduces;
- a paragraph in Latin script followed by one in CJK script (an English paragraph and its Japanese
  rendering) is packed as one unit when both fit in a chunk, so a translation never lands in another chunk
  than its original;
- a paragraph longer than `max_tokens` is cut into windows of whole sentences (runner.retrieval.language);
  each window after the first starts with the last sentences of the one before, as many as fit in
  `overlap_tokens`, and the last window is packed with what follows;
- a sentence longer than `max_tokens` (a list without full stops, say) is cut into windows of tokens that
  repeat `overlap_tokens` tokens.
Sizes are counted on the text each chunk ends up with, so a chunk is never over `max_tokens` by the
segmenter's own count, whatever cutting it apart did to the tokens at its edges.
"""

from __future__ import annotations

import re

from runner.retrieval.language import cjk_count, sentences
from runner.retrieval.segmenter import Segmenter

_HEADING = re.compile(r"^#{1,6}\s")


def _groups(paragraphs: list[str]) -> list[list[str]]:
    """Paragraphs, a Latin one followed by a CJK one (its rendering) grouped together."""
    out: list[list[str]] = []
    i = 0
    while i < len(paragraphs):
        p = paragraphs[i]
        nxt = paragraphs[i + 1] if i + 1 < len(paragraphs) else None
        if nxt is not None and not _HEADING.match(p) and not cjk_count(p) and cjk_count(nxt):
            out.append([p, nxt])
            i += 2
        else:
            out.append([p])
            i += 1
    return out


def _token_windows(text: str, seg: Segmenter, max_tokens: int, overlap_tokens: int) -> list[str]:
    """A sentence too long for a chunk, as windows of tokens that overlap."""
    toks = seg.tokens(text)
    step = max_tokens - overlap_tokens
    out = []
    start = 0
    while True:
        out.append("".join(toks[start : start + max_tokens]))
        if start + max_tokens >= len(toks):
            return out
        start += step


def _fit(text: str, seg: Segmenter, max_tokens: int) -> list[str]:
    """`text` itself when it is within `max_tokens`, else its token windows (without overlap)."""
    return [text] if seg.count(text) <= max_tokens else _token_windows(text, seg, max_tokens, 0)


def _sentence_windows(pieces: list[str], seg: Segmenter, max_tokens: int, overlap_tokens: int) -> list[str]:
    units: list[tuple[str, int]] = []
    for s in pieces:
        n = seg.count(s)
        if n <= max_tokens:
            units.append((s, n))
        else:
            units += [(w, seg.count(w)) for w in _token_windows(s, seg, max_tokens, overlap_tokens)]
    windows: list[list[tuple[str, int]]] = []
    cur: list[tuple[str, int]] = []
    cur_n = 0
    for s, n in units:
        if cur and cur_n + n > max_tokens:
            windows.append(cur)
            tail: list[tuple[str, int]] = []
            tail_n = 0
            for t, m in reversed(cur):
                if tail_n + m > overlap_tokens or tail_n + m + n > max_tokens:
                    break
                tail.insert(0, (t, m))
                tail_n += m
            cur, cur_n = tail, tail_n
        cur.append((s, n))
        cur_n += n
    windows.append(cur)
    texts = ["".join(t for t, _ in w).strip() for w in windows]
    # Counted again as joined: a segmenter may read the seams between sentences differently.
    return [piece for t in texts if t for piece in _fit(t, seg, max_tokens)]


def pack_tokens(paragraphs: list[str], seg: Segmenter, max_tokens: int, overlap_tokens: int) -> list[str]:
    """Chunks of at most `max_tokens` tokens of `seg`; see the module docstring."""
    if overlap_tokens >= max_tokens:
        raise ValueError("overlap_tokens must be smaller than max_tokens")
    chunks: list[str] = []
    buf: list[str] = []

    def size(parts: list[str]) -> int:
        return seg.count("\n\n".join(parts)) if parts else 0

    def flush() -> None:
        nonlocal buf
        carry = [buf.pop()] if len(buf) > 1 and _HEADING.match(buf[-1]) else []
        if buf:
            chunks.append("\n\n".join(buf))
        buf = carry

    def add(para: str) -> None:
        """One paragraph, cut at sentence ends when it does not fit in a chunk of its own."""
        nonlocal buf
        if size([*buf, para]) <= max_tokens:
            buf.append(para)
            return
        if buf:
            flush()
        if size([*buf, para]) <= max_tokens:
            buf.append(para)
            return
        lead = [buf[0] + "\n\n"] if buf else []  # only a carried heading: it leads the first window
        windows = _sentence_windows([*lead, *sentences(para)], seg, max_tokens, overlap_tokens)
        chunks.extend(windows[:-1])
        buf = [windows[-1]]

    for group in _groups(paragraphs):
        if len(group) > 1 and buf and size([*buf, *group]) > max_tokens:
            flush()  # a paragraph and its rendering start a chunk together rather than be parted
        if len(group) > 1 and size([*buf, *group]) <= max_tokens:
            buf += group
            continue
        for para in group:
            add(para)
    if buf:
        chunks.append("\n\n".join(buf))
    return chunks
