"""Tests for the built-in synthetic corpus ``builtin:stories`` (gptcli/stories.py)."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from gptcli import stories
from gptcli.stories import EOT, generate, iter_stories, write

SEP = "\n" + EOT + "\n"
# A sentence ends at . ! or ? (optionally followed by a closing quote) and whitespace.
SENTENCE_END = re.compile(r'(?:(?<=[.!?])|(?<=[.!?]"))\s+')


@pytest.fixture(scope="module")
def megabyte() -> str:
    return generate(1_000_000, 1337)


@pytest.fixture(scope="module")
def megabyte_stories(megabyte: str) -> list[str]:
    return megabyte.split(SEP)[:-1]


def test_same_seed_same_bytes_different_seed_different_text() -> None:
    a = generate(200_000, 7)
    assert a == generate(200_000, 7)
    assert a != generate(200_000, 8)
    first = iter_stories(3)
    again = iter_stories(3)
    assert [next(first) for _ in range(20)] == [next(again) for _ in range(20)]


def test_global_random_is_left_alone() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate(50_000, 1)
    assert random.random() == expected


@pytest.mark.parametrize("n_bytes", [1, 999, 54_321, 300_000])
def test_size_is_at_least_n_bytes_and_at_most_one_story_over(n_bytes: int) -> None:
    text = generate(n_bytes, 11)
    size = len(text.encode("utf-8"))
    assert size >= n_bytes
    last = text[: -len(SEP)].rsplit(SEP, 1)[-1] + SEP
    assert size - len(last.encode("utf-8")) < n_bytes


def test_zero_bytes_is_empty() -> None:
    assert generate(0, 1) == ""


def test_every_story_ends_with_the_separator(megabyte: str, megabyte_stories: list[str]) -> None:
    assert megabyte.endswith(SEP)
    assert megabyte.count(EOT) == len(megabyte_stories)
    assert "".join(s + SEP for s in megabyte_stories) == megabyte
    for story in megabyte_stories:
        assert story and EOT not in story
        assert story == story.strip()
        assert "\n\n" not in story


def test_iter_stories_yields_plain_stories() -> None:
    gen = iter_stories(5)
    for _ in range(200):
        story = next(gen)
        assert EOT not in story and not story.endswith("\n") and story[0].isupper()


def test_plain_ascii(megabyte: str) -> None:
    assert megabyte.isascii()


def test_diverse_on_one_megabyte(megabyte: str) -> None:
    text = megabyte.replace(EOT, " ")
    sentences = {s for s in SENTENCE_END.split(text) if s.strip()}
    # measured: about 16,000 distinct sentences in 1 MB for several seeds
    assert len(sentences) > 14_000
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    # measured: about 1,500 distinct words in 1 MB (about 1,700 in 5 MB)
    assert 1_200 < len(words) < 4_000


def test_story_lengths_and_openers(megabyte_stories: list[str]) -> None:
    lengths = [len(s.split()) for s in megabyte_stories]
    assert min(lengths) >= 50 and max(lengths) <= 260
    assert 90 <= sum(lengths) / len(lengths) <= 180
    n = len(megabyte_stories)
    once = sum(s.startswith("Once upon a time") for s in megabyte_stories) / n
    one_day = sum(s.startswith("One day") for s in megabyte_stories) / n
    assert 0.25 < once < 0.5
    assert 0.1 < one_day < 0.35
    assert 0.2 < 1 - once - one_day
    openers = {" ".join(s.split()[:2]) for s in megabyte_stories}
    assert {"There was", "Long ago,", "Every morning,"} <= openers


def test_word_lists_are_rich_enough() -> None:
    assert len(set(stories.BOY_NAMES)) >= 50 and len(set(stories.GIRL_NAMES)) >= 50
    assert not set(stories.BOY_NAMES) & set(stories.GIRL_NAMES)
    assert len(set(stories.BOY_NAMES + stories.GIRL_NAMES)) >= 100
    assert len(stories.PLOTS) >= 8
    assert len(stories.PETS) >= 15 and len(stories.THINGS) >= 30 and len(stories.PLACES) >= 10


def test_articles_agree(megabyte: str) -> None:
    assert not re.findall(r"\b[Aa] [aeiouAEIOU]\w*", megabyte)
    assert not re.findall(r"\b[Aa]n [b-df-hj-np-tv-zB-DF-HJ-NP-TV-Z]\w*", megabyte)


def test_no_layout_slips(megabyte: str) -> None:
    assert "  " not in megabyte
    assert not re.search(r"[{}<>|\[\]]", megabyte.replace(EOT, ""))
    assert not re.search(r" [,.!?]", megabyte)
    assert not re.search(r"[,.!?]{2}", megabyte)
    assert not re.search(r"\b(\w+) \1\b", megabyte)
    assert megabyte.count('"') % 2 == 0


def test_sentences_start_with_a_capital(megabyte_stories: list[str]) -> None:
    for story in megabyte_stories[:2000]:
        assert story.count('"') % 2 == 0, story
        previous = ""
        for sentence in SENTENCE_END.split(story):
            starts_upper = sentence[0].isupper() or (sentence[0] == '"' and sentence[1].isupper())
            # a speech tag may follow a quoted question or exclamation: "Look!" said Tom.
            speech_tag = previous.endswith(('?"', '!"'))
            assert starts_upper or speech_tag, (sentence, story)
            assert sentence[-1] in '.!?"', (sentence, story)
            previous = sentence


def test_pronouns_match_the_cast() -> None:
    """When every character who may be called he/she is a girl, no he/him/his, and vice versa."""
    male = re.compile(r"\b(he|him|his|himself)\b", re.IGNORECASE)
    female = re.compile(r"\b(she|her|herself)\b", re.IGNORECASE)
    rng = random.Random(2024)
    checked = {"m": 0, "f": 0}
    for _ in range(3000):
        story, genders = stories._compose(rng)
        hero = re.search(r"\b(" + "|".join(stories.BOY_NAMES + stories.GIRL_NAMES) + r")\b", story)
        assert hero is not None
        if genders == {"f"}:
            checked["f"] += 1
            assert hero.group(1) in stories.GIRL_NAMES, story
            assert not male.search(story), story
        elif genders == {"m"}:
            checked["m"] += 1
            assert hero.group(1) in stories.BOY_NAMES, story
            assert not female.search(story), story
    assert checked["m"] > 300 and checked["f"] > 300


def test_stories_keep_referring_to_their_cast(megabyte_stories: list[str]) -> None:
    names = set(stories.BOY_NAMES + stories.GIRL_NAMES)
    for story in megabyte_stories:
        counts: dict[str, int] = {}
        for word in re.findall(r"[A-Z][a-z]+", story):
            if word in names:
                counts[word] = counts.get(word, 0) + 1
        assert max(counts.values()) >= 3, story


def test_told_stories_are_the_same_text_with_their_facts() -> None:
    """iter_told records the facts without drawing anything more: the same texts, in order."""
    told = list(itertools.islice(stories.iter_told(3), 400))
    assert [t.text for t in told] == list(itertools.islice(iter_stories(3), 400))
    assert {t.plot for t in told} == {plot.__name__.lstrip("_") for plot, _ in stories.PLOTS}
    for t in told:
        assert t.values["name"] in t.text and t.gender in t.genders
        assert t.values["he"] == ("she" if t.gender == "f" else "he")
        assert all(v in t.text for k, v in t.drawn if k in ("critter", "snack", "found_spot"))
        if t.plot == "race":
            assert t.events["race"] in ("won", "lost", "together")
        if t.plot == "lost_and_found":
            assert t.values["helper"] in (t.values["pet"], t.values["friend"])


def test_told_says_which_values_the_text_uses() -> None:
    """A value the text uses is in the text; the pet and the friend are named exactly when
    the text uses them (what "the story does not say" answers rest on)."""
    used_keys = ("name", "friend", "pet", "pkind", "thing", "cthing", "place", "at_place",
                 "age", "tcol", "helper", "goal", "dest", "fear", "bday", "hwho")  # fmt: skip
    counts = {"pet": 0, "friend": 0}
    for t in itertools.islice(stories.iter_told(11), 1500):
        for key in used_keys:
            if key in t.used:
                assert t.values[key].lower() in t.text.lower(), (key, t.text)
        for key in counts:
            named = re.search(rf"\b{t.values[key]}\b", t.text) is not None
            assert named == (key in t.used), (key, t.text)
            counts[key] += named
    assert 200 < counts["pet"] < 1300 and 400 < counts["friend"] < 1300


def test_write_is_atomic_and_exact(tmp_path) -> None:
    target = tmp_path / "corpus" / "stories.txt"
    n = write(target, 20_000, 5)
    data = target.read_bytes()
    assert n == len(data)
    assert data.decode("utf-8") == generate(20_000, 5)
    assert sorted(p.name for p in target.parent.iterdir()) == ["stories.txt"]
    # overwriting an existing file works the same way, and a str path is accepted
    n2 = write(str(target), 5_000, 6)
    assert target.read_text() == generate(5_000, 6) and n2 == target.stat().st_size
    assert sorted(p.name for p in target.parent.iterdir()) == ["stories.txt"]


def test_version_is_bumped_with_the_generated_text() -> None:
    """Run folders fingerprint builtin: corpora by stories.VERSION: a change to the generated
    text must come with a new VERSION (and a new hash here), or old runs would resume on it."""
    import hashlib

    sample = hashlib.sha256(generate(20_000, 1).encode()).hexdigest()
    assert (stories.VERSION, sample) == (
        1,
        "66eced36fbaa5ab0a3f66bd5cba288831c9d1578472d9428d8135b3ce58fad79",
    )
