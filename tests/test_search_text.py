"""search.py: how queries are read and snippets cut (pure functions, no database)."""

from __future__ import annotations

from agent_sessions.search import MAX_QUERY_WORDS, fold, folded_words, query_words, snippet


def test_query_words_are_letters_and_digits_only() -> None:
    assert query_words('"AND" NEAR(x, 2) -y * owner:z') == [
        "AND",
        "NEAR",
        "x",
        "2",
        "y",
        "owner",
        "z",
    ]
    assert query_words("foo_bar x.y it's") == ["foo", "bar", "x", "y", "it", "s"]
    assert query_words("Paris paris PARIS") == ["Paris"]
    assert query_words(" ".join(f"w{n}" for n in range(100))) == [
        f"w{n}" for n in range(MAX_QUERY_WORDS)
    ]
    assert query_words("  \" ' * ( ) -- ") == []


def test_folding_drops_case_and_accents() -> None:
    assert fold("Café CRÈME Ünïcode") == "cafe creme unicode"
    assert folded_words("Straße, Привет!") == ["straße", "привет"]


def test_snippet_is_cut_around_the_first_word_found() -> None:
    text = " ".join(f"w{n}" for n in range(100))
    assert snippet(text, ["W50"]) == "…" + " ".join(f"w{n}" for n in range(46, 62)) + "…"
    assert snippet(text, ["none"]).startswith("w0 w1 ")
    assert snippet("Il fait très beau à Paris", ["tres", "pari"]) == "Il fait très beau à Paris"
    assert snippet("", ["x"]) == ""
