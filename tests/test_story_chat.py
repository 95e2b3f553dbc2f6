"""Tests for the built-in instruction data ``builtin:story-chat`` (gptcli/story_chat.py)."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re

import pytest

from gptcli import stories, story_chat
from gptcli.story_chat import Check, holds


@pytest.fixture(scope="module")
def told() -> list[stories.Told]:
    return list(itertools.islice(stories.iter_told(2024), 1500))


@pytest.fixture(scope="module")
def training() -> list[dict]:
    return list(story_chat.records(1.5, 3))


def _literal_parts(template: str) -> list[str]:
    """The fixed text of a phrasing between its {fields}."""
    return [p.strip() for p in re.split(r"\{[^}]*\}", template) if p.strip()]


def test_same_seed_same_conversations_and_version_is_pinned():
    """Run folders fingerprint builtin:story-chat by VERSION: a change to the conversations
    must come with a new VERSION (and a new hash here), or old runs would resume on it."""
    a = list(story_chat.records(0.2, 1))
    assert a == list(story_chat.records(0.2, 1))
    assert a != list(story_chat.records(0.2, 2))
    digest = hashlib.sha256(json.dumps(a).encode()).hexdigest()
    assert (story_chat.VERSION, stories.VERSION, digest) == (
        1,
        1,
        "4e18307478ce8903a6fc0225257a53421e87d2840c05088fa1a2f1f287072108",
    )


def test_records_are_chat_messages_of_the_requested_size(training):
    sizes = [sum(len(m["content"]) for m in r["messages"]) for r in training]
    assert 1_500_000 <= sum(sizes) < 1_500_000 + max(sizes)
    kinds = set()
    for record in training:
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert all(m["content"] and m["content"] == m["content"].strip() for m in messages)
        assert all(m["content"].isascii() and "{" not in m["content"] for m in messages)
        kinds.add(len(messages))
    assert {2, 4, 6} <= kinds  # follow-up questions and titles make longer conversations


def test_every_kind_of_request_is_made(training):
    users = "\n".join(m["content"] for r in training for m in r["messages"] if m["role"] == "user")
    for needle in ("Write", "summar", "title", "Continue", "What is the name", "Who"):
        assert needle.lower() in users.lower(), needle


def test_constraints_in_a_request_hold_in_its_reference_story(told):
    """Every check a request states (hero, girl or boy, pet, place, lost thing, words) holds
    in the story that is its reply, and the request names what the check looks for."""
    rng = random.Random(1)
    counts: dict[str, int] = {}
    for held_out in (False, True):
        asks = story_chat.phrasings(held_out)
        for t in told[:600]:
            request, checks = story_chat.write_request(t, rng, asks)
            for check in checks:
                counts[check.what] = counts.get(check.what, 0) + 1
                assert holds(check, t.text), (check, t.text)
                if check.what in ("name", "pet", "friend", "word"):
                    assert all(w in request for w in check.words), (check, request)
            assert story_chat.has_word(request, t.values["kid"])
    assert set(counts) == {"name", "gender", "pet", "place", "lost", "friend", "word"}
    assert counts["name"] == 1200 and counts["gender"] > 900


def test_checks_catch_a_reply_that_misses_them():
    assert not holds(Check("name", ("Lily",)), "Once there was a girl named Lilyanne.")
    assert holds(Check("gender", ("she",)), "Lily had a dog. She loved him.")
    assert not holds(Check("gender", ("she",)), "There was a boy, Luke. He saw her.")
    assert holds(Check("pet", ("Max", "guinea pig")), "Max the guinea pig ran off.")
    assert not holds(Check("pet", ("Max", "dog")), "Max the cat ran off.")
    assert not holds(Check("lost", ("ball",)), "Tom played with his ball.")
    assert holds(Check("lost", ("ball",)), "Tom lost his ball.")
    assert holds(Check("answer", ("ball",)), "His red ball.")
    assert not holds(Check("answer", ("ball",)), "I don't know if it was a ball.")
    assert holds(Check("unknown"), "The story does not say.")
    assert not holds(Check("unknown"), "It was a ball.")


def test_answers_are_in_the_story_and_unknowns_are_not(told):
    """A question's answer word is in the story; "the story does not say" only when the story
    really does not tell it; the reply the data gives passes the question's own check."""
    rng = random.Random(2)
    seen: dict[str, int] = {}
    for t in told:
        v = t.values
        for q in story_chat.questions(t):
            reply = story_chat.answer(q, t, rng)
            assert holds(q.check, reply), (q, reply)
            key = f"{q.table}:{q.check.what}"
            seen[key] = seen.get(key, 0) + 1
            if q.check.what == "answer":
                assert any(story_chat.has_word(t.text, w) for w in q.check.words), (q, t.text)
            elif q.table == "q.pet":
                assert not re.search(rf"\b{v['pet']}\b", t.text), t.text
            elif q.table == "q.friend":
                assert not re.search(rf"\b{v['friend']}\b", t.text), t.text
            elif q.table == "q.age":
                assert f"{v['age']} years old" not in t.text and "-year-old" not in t.text
            elif q.table == "q.lost":
                assert not re.search(r"\b(lost|missing)\b", t.text), t.text
    for table in ("q.friend", "q.pet", "q.age", "q.lost"):
        assert seen[f"{table}:unknown"] > 30, table
    assert len([k for k in seen if k.endswith(":answer")]) >= 20


def test_summaries_are_one_sentence_about_the_hero(told):
    rng = random.Random(3)
    plots = set()
    for t in told[:800]:
        line = story_chat.summary(t, rng)
        plots.add(t.plot)
        assert t.values["name"] in line and line.endswith(".") and "{" not in line
        assert not re.search(r"[.!?]\s", line), line
    assert len(plots) == len(stories.PLOTS)


def test_titles_and_continuations(told):
    rng = random.Random(4)
    for t in told[:500]:
        title = story_chat.title(t, rng)
        assert title and title[0].isupper() and "{" not in title and "\n" not in title
        start, rest = story_chat.cut(t.text, rng)
        assert start and rest and start.count('"') % 2 == 0
        assert re.sub(r"\s+", " ", f"{start} {rest}") == re.sub(r"\s+", " ", t.text)


def test_held_out_names_and_phrasings_never_train(training):
    """The split shares no name and no phrasing with the training conversations."""
    names = story_chat.HELD_OUT_NAMES
    for group in (stories.BOY_NAMES, stories.GIRL_NAMES, stories.PET_NAMES):
        assert 3 <= len(names & set(group)) <= len(set(group)) // 5
    text = "\n".join(m["content"] for r in training for m in r["messages"])
    assert not [n for n in names if re.search(rf"\b{n}\b", text)]
    users = "\n".join(m["content"] for r in training for m in r["messages"] if m["role"] == "user")
    checked = 0
    for table, (train, held) in story_chat.SPLITS.items():
        assert held and train and not set(train) & set(held), table
        for template in held:
            parts = [p for p in _literal_parts(template) if len(p) >= 12]
            parts = [p for p in parts if not any(p in t for t in train)]
            for part in parts[:1]:
                checked += 1
                assert part not in users, (table, part)
    assert checked >= 25


def test_held_out_prompts_for_the_benchmark():
    probes = story_chat.held_out(40, seed=1)
    assert probes == story_chat.held_out(40, seed=1)
    assert [p.kind for p in probes[:4]] == ["write", "question", "write", "question"]
    assert sum(p.held_out_name for p in probes) == 20
    held = story_chat.phrasings(held_out=True)
    for p in probes:
        (message,) = p.messages
        assert message["role"] == "user"
        assert p.checks and all(holds(c, p.reference) for c in p.checks)
        name = re.search(r"\b(" + "|".join(story_chat.HELD_OUT_NAMES) + r")\b", message["content"])
        assert bool(name) == p.held_out_name
        table = "write" if p.kind == "write" else "frame"
        used = [t for t in held[table] if all(s in message["content"] for s in _literal_parts(t))]
        assert used, message["content"]
    unknown = sum(c.what == "unknown" for p in probes for c in p.checks)
    assert 1 <= unknown <= 15
