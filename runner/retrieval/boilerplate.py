"""Boilerplate: the rules that tell page furniture from prose, paragraph by paragraph (runner.retrieval.chunking
applies them before packing).

Boilerplate. Web pages saved as text carry page furniture: link lists, menus, share bars, copyright
footers, reference lists. Such paragraphs are dense in topic words, so an embedding model finds them
"relevant" to everything, and the POV score (which rewards broad similarity) then promotes them: with
MiniLM on the BRICS sample, the notebook's algorithm puts a reference list into the final five for 3 of 30
question x POV-set pairs. With `drop_boilerplate` (default on) each paragraph is tested before packing, in
the spirit of jusText (Pomikálek 2011), by signals that prose does not produce:
- links: URLs and e-mail addresses make up >= 20% of its characters;
- menu: >= 3 ` | `-style separators, at least one per 10 words;
- footer: a short paragraph with `©` or "all rights reserved";
- reference entry: starts like a citation, `Surname, I. ... (2021)`;
- reference list: lines that start with a list marker (`1.`, `1)`, `[1]`) and carry a citation's mark (a
  year in parentheses followed by `.` or `,`, a DOI, a URL, `et al`, `pp. 12`, `Vol. 3`, `Retrieved`,
  `Accessed`, `ISBN`, a document number such as `2024/1252`) make up at least half of its lines. A
  numbered paragraph of prose that cites a source (`2. As the IEA (2024) notes, ...`) has no such mark;
- author bio: a paragraph of at most 100 words that opens like one (`About the author`, or a name followed
  by `is a/an/the`) and has two marks of one (`fellow`, `editor`, `previously`, `PhD`, `holds a`, `follow
  him`, an @handle, ...): "Fatih Birol is the executive director of the IEA, and he warned ..." has one;
- newsletter, cookie notice, site furniture: a paragraph of at most 80 words with two or more distinct cue
  phrases of page notices (`newsletter`, `inbox`, `subscribe`; `cookies`, `consent`, `privacy policy`,
  `accept all`; `contact us`, `frequently asked questions`, `back to top`, `password`, ...), named for the
  kind with the most. One cue is not enough: prose says "we use cookies" or "sign up to a partnership";
- word list: in an English file, fewer than 15% stopwords over >= 5 words (prose runs at 30-55%;
  menus and keyword lists below 10%). The English test stops this rule from emptying other languages.
Japanese (any paragraph with CJK characters) is held to the same rules, sized in words as a Japanese reader
would count them (the words outside CJK script plus half its CJK characters), with what its page furniture
looks like: full-width separators (`｜`, `＞`, `／`, `›`) for menus and breadcrumbs, `無断転載` and `著作権` for
footers, Japanese cue phrases for notices (`プライバシーポリシー`, `メールマガジン`, `お問い合わせ`, ...,
matched as substrings since Japanese has no spaces to mark a word), and for word lists the share of
hiragana instead of stopwords: Japanese prose writes its particles and endings in hiragana (30-60% of its
CJK characters), menus and lists of titles are nouns in kanji and katakana (under 15%); judged from 20 CJK
characters up, never on a Markdown heading (a title is nouns too). The English stopword test is not applied
to a paragraph with CJK characters: its words are not English words.
Chunks left with fewer than 8 words are dropped too: such a chunk is a lone heading or label, carries
nothing worth retrieving, and (being short) sits close to the short POV statements in embedding space.

Every text rule here runs in linear time: no pattern can backtrack over the same characters twice, and the
anchored patterns with nested repetition (the citation, a bio's opening) are bounded in length, so a megabyte
token costs what a megabyte of prose does. The rules are cheap too, since every ingest chunks the whole
corpus again: the patterns that search a paragraph run only where a plain substring test finds what they
look for, and each paragraph's stopwords are counted once (the file's English test sums the counts).
"""

from __future__ import annotations

import re

from runner.retrieval.language import CJK_RUN, cjk_count, hiragana_count

_WIDE_SEPARATOR = re.compile(r"[｜＞／›]")
HIRAGANA_SHARE = 0.15
"""Below this share of hiragana among its CJK characters, a Japanese paragraph is a word list."""
_URL = re.compile(r"(?:https?://|www\.)\S+|(?<![\w.+-])[\w.+-]+@[\w-]+\.[\w.]+")
_SEPARATOR = re.compile(r"(?:^|\s)[|•·»](?=\s|$)")
# Bounded repeats: a surname, a few initials, then the year within 200 characters. Unbounded, a paragraph of
# initials made the lazy `.{0,200}?` rescan 200 characters for every initial.
_CITATION = re.compile(
    r"^[A-Z][\w'\-]{1,60}(?:-[A-Z][\w']{1,40})?,\s{1,5}"  # Surname, (or Double-Barrelled,)
    r"(?:[A-Z]\.\s{0,3}){1,8}"  # initials
    r".{0,200}?\((?:1[89]|20)\d\d[a-z]?\)"  # and the year in parentheses soon after
)
_WORD = re.compile(r"[A-Za-z']+")
_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves
    also may might must shall upon whose yet"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def stop_counts(text: str) -> tuple[int, int]:
    """(stopwords among its words, whitespace tokens): what stopword_density divides."""
    return sum(map(STOPWORDS.__contains__, _WORD.findall(text.lower()))), len(text.split())


def stopword_density(text: str) -> float:
    stops, tokens = stop_counts(text)
    return stops / tokens if tokens else 0.0


_LIST_ITEM = re.compile(r"[ \t]{0,8}(?:\[\d{1,3}\]|\d{1,3}[.)])\s")
_REFERENCE_MARK = re.compile(
    r"\((?:1[89]|20)\d\d[a-z]?\)[.,]|\bdoi\b|https?://|\bet al\b|\bpp?\.\s?\d|\bvol\.\s?\d"
    r"|\bretrieved\b|\baccessed\b|\bisbn\b|\b(?:1[89]|20)\d\d/\d{1,6}\b",
    re.IGNORECASE,
)


def _reference_list(paragraph: str) -> bool:
    """At least half of the lines are numbered or bracketed entries with a citation's mark."""
    lines = [ln for ln in paragraph.split("\n") if ln.strip()]
    entries = sum(
        1
        for ln in lines
        if _LIST_ITEM.match(ln) and len(ln.split()) <= 80 and _REFERENCE_MARK.search(ln) is not None
    )
    return entries > 0 and 2 * entries >= len(lines)


_BIO_NAME = re.compile(r"(?:[A-Z][\w'’.-]{0,30}\s){1,3}(?:is|was)\s(?:a|an|the)\s")
_BIO_MARKS = re.compile(
    r"\b(?:fellow|professor|lecturer|researcher|analyst|economist|editor|correspondent|columnist|journalist"
    r"|reporter|writer|contributor|director|previously|ph\.?d|holds a|is the author of|writes (?:about|on)"
    r"|covers|follow (?:him|her|them))\b|(?<![\w@])@\w"
)


def _author_bio(paragraph: str, low: str) -> bool:
    if not (low.startswith("about the author") or _BIO_NAME.match(paragraph)):
        return False
    return len(set(_BIO_MARKS.findall(low))) >= 2


NOTICE_CUES: dict[str, tuple[str, ...]] = {
    "newsletter": (
        "newsletter",
        "newsletters",
        "subscribe",
        "unsubscribe",
        "sign up",
        "inbox",
        "delivered to your",
    ),
    "cookie notice": (
        "cookie",
        "cookies",
        "consent",
        "privacy policy",
        "cookie policy",
        "accept all",
        "manage preferences",
        "cookie settings",
        "terms of use",
        "terms of service",
    ),
    "site furniture": (
        "contact us",
        "about us",
        "careers",
        "frequently asked questions",
        "faq",
        "faqs",
        "was this article helpful",
        "was this page helpful",
        "back to top",
        "customer service",
        "password",
        "log in",
        "sign in",
        "subscription",
        "share this article",
        "print this page",
        "related articles",
    ),
}
"""Cue phrases of page notices, by the reason a paragraph made of them is dropped for."""
_NOTICE = re.compile(
    r"\b(?:"
    + "|".join(sorted((re.escape(c) for cs in NOTICE_CUES.values() for c in cs), key=len, reverse=True))
    + r")\b"
)
_NOTICE_KIND = {c: kind for kind, cues in NOTICE_CUES.items() for c in cues}
_NOTICE_HINTS = (
    "newsletter",
    "subscri",
    "sign ",
    "inbox",
    "cookie",
    "consent",
    "privacy",
    "accept all",
    "preferences",
    "terms of",
    "contact",
    "about us",
    "careers",
    "question",
    "faq",
    "helpful",
    "back to top",
    "customer",
    "password",
    "log in",
    "share this",
    "print this",
    "related",
)


JA_NOTICE_CUES: dict[str, tuple[str, ...]] = {
    "newsletter": (
        "メールマガジン",
        "メルマガ",
        "ニュースレター",
        "配信の停止",
        "配信停止",
        "購読",
        "登録ボタン",
    ),
    "cookie notice": (
        "クッキー",
        "プライバシーポリシー",
        "個人情報の取り扱い",
        "同意する",
        "同意したもの",
        "利用規約",
    ),
    "site furniture": (
        "お問い合わせ",
        "よくある質問",
        "サイトマップ",
        "ログイン",
        "会員登録",
        "ページの先頭",
        "ページトップ",
        "この記事をシェア",
        "印刷する",
        "関連記事",
        "人気記事",
        "ランキング",
        "あわせて読みたい",
        "会社概要",
        "採用情報",
    ),
}
"""Japanese cue phrases of page notices, found as substrings (Japanese marks no word boundaries)."""
_JA_NOTICE_KIND = {c: kind for kind, cues in JA_NOTICE_CUES.items() for c in cues}


def paragraph_size(paragraph: str) -> int:
    """Its length in words: whitespace tokens; with CJK characters, the tokens outside CJK runs plus half
    its CJK characters (a Japanese word is about two characters)."""
    cjk = cjk_count(paragraph)
    if not cjk:
        return len(paragraph.split())
    return len(CJK_RUN.sub(" ", paragraph).split()) + (cjk + 1) // 2


def _notice(low: str, japanese: bool = False) -> str | None:
    """The kind of page notice a short paragraph is, from two or more distinct cue phrases (Japanese ones
    too when `japanese`)."""
    kinds: list[str] = []
    if any(h in low for h in _NOTICE_HINTS):
        kinds = [_NOTICE_KIND[c] for c in set(_NOTICE.findall(low))]
    if japanese:
        kinds += [kind for cue, kind in _JA_NOTICE_KIND.items() if cue in low]
    if len(kinds) < 2:
        return None
    return max(NOTICE_CUES, key=kinds.count)  # ties: the order of NOTICE_CUES


def boilerplate_reason(paragraph: str, english: bool = True, density: float | None = None) -> str | None:
    """Why a paragraph is page furniture rather than prose, or None (see the module docstring). `density`
    is its stopword_density when the caller has it already."""
    tokens = paragraph.split()
    if not tokens:
        return None
    cjk = 0 if paragraph.isascii() else cjk_count(paragraph)
    size = paragraph_size(paragraph) if cjk else len(tokens)
    if ("://" in paragraph or "www." in paragraph or "@" in paragraph) and sum(
        len(m) for m in _URL.findall(paragraph)
    ) >= 0.2 * len(paragraph):
        return "links"
    if any(c in paragraph for c in "|•·»") or cjk:
        seps = len(_SEPARATOR.findall(paragraph))
        if cjk:
            seps += len(_WIDE_SEPARATOR.findall(paragraph))
        if seps >= 3 and seps * 10 >= size:
            return "menu"
    low = paragraph.lower()
    if size < 60 and (
        "©" in paragraph or "all rights reserved" in low or "無断転載" in low or "著作権" in low
    ):
        return "footer"
    if _CITATION.match(paragraph):
        return "reference entry"
    if paragraph.lstrip()[:1] in _LIST_STARTS and _reference_list(paragraph):
        return "reference list"
    if size <= 100 and _author_bio(paragraph, low):
        return "author bio"
    if size <= 80:
        kind = _notice(low, cjk > 0)
        if kind is not None:
            return kind
    if cjk:
        if cjk >= 20 and not paragraph.startswith("#") and hiragana_count(paragraph) < HIRAGANA_SHARE * cjk:
            return "word list"
    elif english and len(tokens) >= 5:
        if density is None:
            density = stopword_density(paragraph)
        if density < 0.15:
            return "word list"
    return None


_LIST_STARTS = frozenset("[0123456789")
