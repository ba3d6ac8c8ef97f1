"""What the search index holds and how a query is read: pure text handling, shared by backends.

A query is user text, never syntax: it is split into words (runs of Unicode letters and
digits), and every word must occur in a message for it to match; the last word also matches
as a prefix (search as you type). Each backend turns the words into its own query language
with every word quoted, so nothing typed can be read as an operator.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from .pruning import Item
from .text import item_text

MAX_INDEXED_CHARS = 100_000
"""Characters of one message's text that are indexed (PostgreSQL's tsvector holds 1 MB)."""

MAX_QUERY_WORDS = 32
"""Words of a query that are searched for; later ones are ignored."""

MAX_WORD_CHARS = 100
"""A query word longer than this matches nothing (PostgreSQL does not index such words)."""

MIN_PREFIX_CHARS = 3
"""The last word matches as a prefix only from this length: shorter prefixes match too much."""

_WORD = re.compile(r"[^\W_]+")  # letters and digits; "_" separates words, as in both indexes


def query_words(query: str) -> list[str]:
    """The distinct words of ``query``, in order (compared case-insensitively), at most 32."""
    seen: set[str] = set()
    words: list[str] = []
    for word in _WORD.findall(query):
        key = word.casefold()
        if key not in seen:
            seen.add(key)
            words.append(word)
    return words[:MAX_QUERY_WORDS]


def indexed_text(item: Item | None) -> str | None:
    """The text indexed for an item: its message text (``text.item_text``), cut to a bound.

    Characters no database text can hold (NUL, lone surrogates; the JSON payload escapes
    them) are replaced, so indexing never fails a write the payload alone would not.
    """
    text = item_text(item)
    if text is None:
        return None
    text = text[:MAX_INDEXED_CHARS]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", " ") if "\x00" in text else text


def fold(text: str) -> str:
    """Lower case without diacritics ("Café" -> "cafe"), as SQLite's FTS5 tokenizer reads text.

    PostgreSQL's ``simple`` configuration lowercases only what the database's locale knows
    and keeps accents, so its index and queries are folded here instead, the same way.
    """
    decomposed = unicodedata.normalize("NFD", text)
    stripped = "".join(char for char in decomposed if unicodedata.category(char) != "Mn")
    return unicodedata.normalize("NFC", stripped).lower()


def folded_words(text: str) -> list[str]:
    """The words of ``text``, folded: what PostgreSQL indexes and searches for."""
    return _WORD.findall(fold(text))


SNIPPET_WORDS = 16
"""Words in a snippet: a short line of context around the first word found."""


def snippet(text: str, terms: list[str], *, size: int = SNIPPET_WORDS) -> str:
    """An excerpt of ``text``: ``size`` words from shortly before the first word of ``terms``.

    Words compare folded (``fold``); the last term also matches as a prefix from
    ``MIN_PREFIX_CHARS`` letters, as in a search. "…" marks text left out at either end.
    """
    wanted = {fold(term) for term in terms}
    last = fold(terms[-1]) if terms and len(terms[-1]) >= MIN_PREFIX_CHARS else None
    spans = [match.span() for match in _WORD.finditer(text)]
    first = 0
    for index, (start, end) in enumerate(spans):
        word = fold(text[start:end])
        if word in wanted or (last is not None and word.startswith(last)):
            first = index
            break
    begin = max(0, min(first - size // 4, len(spans) - size))
    chosen = spans[begin : begin + size]
    if not chosen:
        return text[:200]
    excerpt = text[chosen[0][0] : chosen[-1][1]]
    prefix = "…" if begin > 0 else ""
    suffix = "…" if begin + size < len(spans) else ""
    return f"{prefix}{excerpt}{suffix}"


def owner_token(user_id: str) -> str:
    """One index token naming a user (a digest: user ids may hold any characters).

    Searching for it narrows the full-text match to the user's own messages before ranking;
    the owner is still checked against the session row.
    """
    return "u" + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
