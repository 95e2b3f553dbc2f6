"""Word n-gram hashes of a batch: the words a regex finds, n-grams that never cross documents,
and hashes that are the same in every process and release (saved signatures depend on them)."""

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.data import shingles

WORD = re.compile(r"[a-z0-9\x80-\U0010ffff]+")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60)))
def test_words_are_the_runs_of_letters_digits_and_non_ascii(docs):
    w = shingles.words(docs)
    assert w.counts().tolist() == [len(WORD.findall(d.lower())) for d in docs]
    by_word: dict[str, int] = {}
    flat = [x for d in docs for x in WORD.findall(d.lower())]
    for word, h in zip(flat, w.hashes.tolist(), strict=True):
        assert by_word.setdefault(word, h) == h  # a word hashes alike wherever it is


def test_ngrams_stay_inside_their_document():
    w = shingles.words(["A b, C", "d e f g", "", "h"])
    g = shingles.ngrams(w, 2)
    assert np.diff(g.starts).tolist() == [2, 3, 0, 1]  # the lone word: one short shingle
    assert np.diff(shingles.ngrams(w, 2, short=False).starts).tolist() == [2, 3, 0, 0]
    same = shingles.ngrams(shingles.words(["c d"]), 2).hashes
    assert same[0] not in g.hashes  # "c" ends one document, "d" starts the next


def test_hashes_are_pinned():
    """A change here changes every near-duplicate decision: bump curate.VERSION with it."""
    assert shingles.words(["Hello"]).hashes.tolist() == [8108110670706457733]
    grams = shingles.ngrams(shingles.words(["a b c d e f"]), 5).hashes.tolist()
    assert grams == [8887046408614839095, 15125547519642167095]
