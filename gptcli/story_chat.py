"""The built-in instruction data ``builtin:story-chat``: conversations about generated stories.

Every conversation is made from one story of the built-in generator and the facts it drew
(stories.Told), so every reply is correct by construction: write a story with given constraints
(the reply is the story, which meets them), answer questions about a story (or say the story
does not tell), summarise it in one sentence, continue it, give it a title. Deterministic from
the seed, like builtin:stories.

A seeded split holds out some names and some phrasings of every request: the training
conversations never contain them, and held_out() makes the benchmark's prompts from them, so a
model is measured on wordings and names it was never finetuned on.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from gptcli import stories
from gptcli.stories import Told

# The conversations' version: run folders fingerprint builtin:story-chat by it and by
# stories.VERSION. Bump it whenever the conversations change; tests/test_story_chat.py pins a
# hash of a fixed sample to it.
VERSION = 1

# The held-out split of names and phrasings is drawn from this seed, never from a recipe's.
SPLIT_SEED = 36
HELD_OUT_SHARE = 0.2  # of every phrasing table with 3 or more entries (at least one)

# Replies that say the story does not tell contain one of these (lower case).
UNKNOWN_MARKERS = ("does not say", "doesn't say", "does not tell", "don't know", "not in the story")
# A story about a lost thing says so with one of these words.
LOSS_WORDS = ("lost", "lose", "gone", "missing", "find", "found", "not there")


def _held_names(names: tuple[str, ...], label: str) -> frozenset[str]:
    unique = sorted(set(names))
    rng = random.Random(f"{SPLIT_SEED}:{label}")
    return frozenset(rng.sample(unique, max(1, len(unique) // 10)))


# About a tenth of the children's and of the pets' names: never in a training conversation.
HELD_OUT_NAMES = (
    _held_names(stories.BOY_NAMES, "boys")
    | _held_names(stories.GIRL_NAMES, "girls")
    | _held_names(stories.PET_NAMES, "pets")
)


# ---------------------------------------------------------------------------------------------
# Phrasings of every request, each table split into training and held-out entries
# ---------------------------------------------------------------------------------------------

ASKS: dict[str, tuple[str, ...]] = {
    # a story to write: the hero's name and kind, then the constraints
    "write": (
        "Write a story about a {kid} named {name}.",
        "Tell me a story about a little {kid} called {name}.",
        "Can you write a short story? The main character is a {kid} named {name}.",
        "Please write a children's story about {name}, a {kid}.",
        "I would like a bedtime story about a {kid} called {name}.",
        "Write a short story for a child. The hero is a {kid} named {name}.",
        "Make up a story about a {kid} whose name is {name}.",
        "Could you tell me a story? It should be about a {kid} named {name}.",
        "Write me a simple story about a little {kid}, {name}.",
        "Tell a short story. Its hero is {name}, a little {kid}.",
    ),
    "c.pet": (
        "Include a {pkind} named {pet}.",
        "There should be a {pkind} called {pet}.",
        "Put a {pkind} named {pet} in the story.",
        "The story needs a {pkind} whose name is {pet}.",
        "Add a {pkind} called {pet}.",
    ),
    "c.place": (
        "Part of the story should happen {at_place}.",
        "Set some of it {at_place}.",
        "Some of the story takes place {at_place}.",
        "Make sure {place} is in the story.",
        "Let part of it happen {at_place}.",
    ),
    "c.lost": (
        "In the story, {name} loses {his} {thing}.",
        "Something gets lost: {a_thing}.",
        "{A_thing} should get lost and be found again.",
        "{name}'s {thing} goes missing.",
        "Make it about a lost {thing}.",
    ),
    "c.friend": (
        "{His} friend is called {friend}.",
        "Include {his} friend {friend}.",
        "{name} has a friend named {friend}.",
        "There should be a friend called {friend}.",
    ),
    "c.word": (
        'Use the word "{w1}".',
        'Include the word "{w1}".',
        'The word "{w1}" must appear in it.',
        'Make sure the story uses the word "{w1}".',
    ),
    "c.words": (
        'Use the words "{w1}" and "{w2}".',
        'Include the words "{w1}" and "{w2}".',
        'Make sure the words "{w1}" and "{w2}" appear.',
        'The story must use the words "{w1}" and "{w2}".',
    ),
    # a story in the prompt, then a question about it
    "frame": (
        "{story}\n\n{question}",
        "Read this story:\n\n{story}\n\n{question}",
        "Here is a story.\n\n{story}\n\nAnswer this: {question}",
        "{story}\n\nQuestion: {question}",
        "Story:\n{story}\n\n{question}",
        "Read the story and answer the question.\n\n{story}\n\n{question}",
    ),
    "summary": (
        "{story}\n\nSummarize this story in one sentence.",
        "Tell me in one sentence what this story is about.\n\n{story}",
        "Read the story and give a one-sentence summary.\n\n{story}",
        "{story}\n\nWhat happens in this story? Answer in one sentence.",
        "Sum up this story in a single sentence:\n\n{story}",
    ),
    "continue": (
        "Continue this story:\n\n{start}",
        "Finish the story.\n\n{start}",
        "Here is the start of a story. Write the rest.\n\n{start}",
        "{start}\n\nWhat happens next? Finish the story.",
        "Please continue the story below.\n\n{start}",
    ),
    "title": (
        "{story}\n\nGive this story a title.",
        "What would be a good title for this story?\n\n{story}",
        "Write a title for the story below.\n\n{story}",
        "{story}\n\nWhat could this story be called?",
        "Suggest a short title for this story:\n\n{story}",
    ),
    "title.more": (
        "Now give it a title.",
        "What is a good title for it?",
        "Can you give the story a title?",
        "What would you call this story?",
    ),
    # questions (who, where, what was lost, how it ended, ...)
    "q.who": (
        "Who is the story about?",
        "Who is the main character?",
        "What is the name of the main character?",
        "Who is this story about?",
    ),
    "q.friend": (
        "What is the name of {name}'s friend?",
        "Who is {name}'s friend?",
        "What is {name}'s friend called?",
        "Does {name} have a friend? What is the friend's name?",
    ),
    "q.pet": (
        "What is the name of the pet in the story?",
        "What is the pet called?",
        "What is the pet's name?",
        "Is there a pet in the story? What is its name?",
    ),
    "q.pkind": (
        "What kind of animal is {pet}?",
        "What animal is {pet}?",
        "{pet} is what kind of animal?",
    ),
    "q.age": (
        "How old is {name}?",
        "What is {name}'s age?",
        "How many years old is {name}?",
    ),
    "q.colour": (
        "What color is {name}'s {thing}?",
        "What color is the {thing}?",
        "Which color was the {thing}?",
    ),
    "q.lost": (
        "What did {name} lose?",
        "What went missing in the story?",
        "What could {name} not find?",
        "What did {name} lose in the story?",
    ),
    "q.finder": (
        "Who found the {thing}?",
        "Who helped {name} find the {thing}?",
        "Who found {name}'s {thing}?",
    ),
    "q.spot": (
        "Where was the {thing} found?",
        "Where did they find the {thing}?",
        "In what spot was the {thing} found?",
    ),
    "q.where": (
        "Where did {name} go?",
        "Where did the story happen?",
        "Where was {name} in the story?",
        "Where does the story take place?",
    ),
    "q.end": (
        "How did the story end?",
        "How does the story end?",
        "What happened at the end of the story?",
        "How did it end?",
    ),
    "q.fear": (
        "What was {name} afraid of?",
        "What scared {name}?",
        "What was {name} scared of?",
    ),
    "q.trip": (
        "Where did {name} go with {parent}?",
        "Where did they go on their trip?",
        "What place did {name} visit?",
    ),
    "q.race": (
        "Who won the race?",
        "Who was the winner of the race?",
        "Who won?",
    ),
    "q.make": (
        "What did {name} make?",
        "What did they make?",
        "What did {name} build in the story?",
    ),
    "q.plant": (
        "What did {name} plant?",
        "What did {name} put in the ground?",
        "What seed did {name} plant?",
    ),
    "q.bday": (
        "Whose birthday was it?",
        "Who had a birthday?",
        "Whose birthday surprise was it?",
    ),
    "q.help": (
        "Who did {name} help?",
        "Who needed help in the story?",
        "Who did {name} help in the story?",
    ),
    "q.wish": (
        "What did {name} wish for?",
        "What was {name}'s wish?",
        "What did {name} wish?",
    ),
    "q.weather": (
        "What was the weather like?",
        "What was the weather like in the story?",
        "How was the weather that day?",
    ),
    "q.share": (
        "What did {friend} want to play with?",
        "What did {name} not want to share?",
        "What did {name} and {friend} fight over?",
    ),
    "q.newfriend": (
        "Who did {name} make friends with?",
        "What was the name of {name}'s new friend?",
        "Who became {name}'s friend?",
    ),
    "q.warn": (
        "Who warned {name}?",
        "Who told {name} what to do?",
        "Who gave {name} advice?",
    ),
}


def _split(name: str, table: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training, held-out) entries of a phrasing table: a seeded fifth held out."""
    if len(table) < 3:
        return table, ()
    n = max(1, round(len(table) * HELD_OUT_SHARE))
    held = set(random.Random(f"{SPLIT_SEED}:{name}").sample(range(len(table)), n))
    return (
        tuple(t for i, t in enumerate(table) if i not in held),
        tuple(t for i, t in enumerate(table) if i in held),
    )


SPLITS = {name: _split(name, table) for name, table in ASKS.items()}


def phrasings(held_out: bool) -> dict[str, tuple[str, ...]]:
    """Every request's phrasings on one side of the split."""
    return {name: pair[1] if held_out and pair[1] else pair[0] for name, pair in SPLITS.items()}


# ---------------------------------------------------------------------------------------------
# Replies (never held out: they are what the model learns to say)
# ---------------------------------------------------------------------------------------------

UNKNOWN = (
    "The story does not say.",
    "I don't know. The story does not say.",
    "The story does not tell us.",
    "I don't know: that is not in the story.",
)
ANSWERS: dict[str, tuple[str, ...]] = {
    "who": ("The story is about {name}.", "It is about a {kid} named {name}.", "{name}."),
    "friend": ("{His} friend is {friend}.", "{friend}.", "{name}'s friend is called {friend}."),
    "pet": ("The pet is called {pet}.", "{pet}.", "The pet's name is {pet}."),
    "pkind": ("{pet} is {a_pkind}.", "{A_pkind}.", "{pet} is {a_pkind}."),
    "age": ("{name} is {age} years old.", "{He} is {age}.", "{Age} years old."),
    "colour": ("It is {tcol}.", "The {thing} is {tcol}.", "{Tcol}."),
    "lost": ("{He} lost {his} {fthing}.", "{His} {cthing}.", "{name} lost {his} {thing}."),
    "finder": ("{helper} found it.", "{helper}.", "{helper} found the {thing}."),
    "spot": ("It was {spot}.", "{Spot}.", "They found it {spot}."),
    "fear": ("{He} was afraid of {fear}.", "{Fear}.", "{name} was scared of {fear}."),
    "end_fear": ("In the end, {name} {fear_did}.", "{name} {fear_did}, and it was fun."),
    "trip": ("They went to {dest}.", "To {dest}.", "{name} went to {dest}."),
    "make": ("They made {make}.", "{A_make}.", "{name} made {make}."),
    "plant": ("{He} planted {seed}.", "{Seed}.", "{name} planted {seed}."),
    "bday": ("It was {bday}'s birthday.", "{bday}.", "{bday} had a birthday."),
    "help": ("{name} helped {hwho}.", "{Hwho}.", "{He} helped {hwho}."),
    "share": ("{name}'s {thing}.", "The {thing}.", "They fought over {name}'s {thing}."),
    "newfriend": (
        "{friend}.",
        "{name} made friends with {friend}.",
        "{His} new friend is {friend}.",
    ),
    "warn": ("{parent} did.", "{parent}.", "{parent} warned {him}."),
}
UNKNOWN_ABOUT = {
    "friend": ("The story does not say who {name}'s friend is.",),
    "pet": ("The story does not say. There is no pet with a name in it.",),
    "age": ("The story does not say how old {name} is.",),
    "lost": ("The story does not say that {name} lost anything.",),
}
TITLE_REPLIES = ("{title}", '"{title}"', 'How about "{title}"?', 'I would call it "{title}".')
TITLES: dict[str, tuple[str, ...]] = {
    "lost_and_found": ("The Lost {Thing}", "{name} and the {Cthing}", "Where Is My {Thing}?"),
    "sharing": ("{name} Learns to Share", "The {Thing} and Two Friends", "{name} and {friend}"),
    "fear": ("{name} and {fear}", "Brave {name}", "{name} Is Not Scared"),
    "helping": ("{name} Helps Out", "A Kind {Kid}", "{name} and {hwho}"),
    "trip": ("A Trip to {dest}", "{name} Goes to {dest}", "A Day at {dest}"),
    "wish": ("{name}'s Wish", "The Wish", "A Wish Comes True"),
    "lesson": ("{name} Learns a Lesson", "{name} Should Have Listened", "A Lesson for {name}"),
    "race": ("The Big Race", "{name} and {friend} Have a Race", "Ready, Set, Go!"),
    "making": ("{name} Makes {make}", "{Make_the}", "How to Make {make}"),
    "weather": ("{name} and the {Daykind} Day", "{A_daykind} Day", "{name}'s {Daykind} Day"),
    "new_friend": ("{name} Makes a Friend", "A New Friend", "{name} and {friend}"),
    "birthday": ("A Surprise for {bday}", "{Bday_s} Birthday", "The Birthday Surprise"),
    "growing": ("{name}'s {Plant}", "{name} Grows a {Plant}", "The Little Seed"),
}
# one sentence per plot (a few phrasings), from facts the story tells
SUMMARIES: dict[str, tuple[str, ...]] = {
    "lost_and_found": (
        "{name} lost {his} {thing} {at_place}, and {helper} found it.",
        "When {name}'s {thing} went missing {at_place}, {helper} helped {him} find it.",
    ),
    "sharing": (
        "{name} did not want to share {his} {thing} with {friend}, but {he} said sorry and "
        "they played together.",
        "After a fight over {name}'s {thing}, {name} and {friend} made up and shared it.",
    ),
    "fear": (
        "{name} was afraid of {fear}, but {he} was brave and {fear_did}.",
        "With help from {buddy}, {name} {fear_did} and found that it was not scary.",
    ),
    "helping": (
        "{name} stopped to help {hintro}.",
        "{name} saw {hintro} in trouble and helped.",
    ),
    "trip": (
        "{name} went to {dest} and saw {sight1} and {sight2}.",
        "On a trip to {dest}, {name} saw {sight1} and {sight2}.",
    ),
    "wish": ("{name} wished {wish_for}, and the wish came true.",),
    "race": (
        "{name} and {friend} had a race, and {race_end}.",
        "{name} raced {friend}, and {race_end}.",
    ),
    "making": (
        "{name} and {mate} made {make}, and they fixed it when something went wrong.",
        "{name} made {make} with {mate}, and it turned out well in the end.",
    ),
    "weather": (
        "{name} played outside on {a_daykind} day.",
        "It was {a_daykind} day, and {name} played outside.",
    ),
    "new_friend": (
        "{name} felt shy at first, but {he} made a new friend named {friend}.",
        "{name} was shy, but {he} said hello to {friend}, and they became friends.",
    ),
    "birthday": (
        "{name} and {helper} made a birthday surprise for {bday}.",
        "{name} planned a surprise for {bday}'s birthday with help from {helper}.",
    ),
    "growing": (
        "{name} planted {seed} and watched it grow.",
        "{name} planted {seed}, watered it, and it grew into a {plant}.",
    ),
}
LESSON_SUMMARIES = (
    "{name} ran near the pond when {parent} said not to, and {he} fell into the mud.",
    "{name} left {his} {thing} on the stairs and tripped over it.",
    "{name} ate too many cookies before dinner and got a tummy ache.",
    "{name} went out without {his} coat and got very cold.",
    "{name} threw {his} {thing} in the house and broke a vase.",
    "{name} let go of {parent}'s hand in the shop and got scared.",
    "{name} forgot to water {his} little plant, and it began to droop.",
    "{name} pushed to the front of the line, and the other children were upset.",
)
WISH_FOR = {"fly": "to fly", "snow": "for snow", "friend": "for a friend", "big": "to be big",
            "pet": "for a pet"}  # fmt: skip
WISH_WORDS = {"fly": ("fly",), "snow": ("snow",), "friend": ("friend",), "big": ("big", "tall"),
              "pet": ("pet", "animal")}  # fmt: skip
WISH_ANSWERS = {"fly": "{He} wished {he} could fly.", "snow": "{He} wished for snow.",
                "friend": "{He} wished for a friend.", "big": "{He} wished to be big and tall.",
                "pet": "{He} wished for a pet."}  # fmt: skip
DAY_KINDS = {"snow": "snowy", "rain": "rainy", "wind": "windy", "sun": "sunny", "autumn": "autumn"}
DAY_WORDS = {"snow": ("snow", "snowy"), "rain": ("rain", "rainy", "raining"),
             "wind": ("wind", "windy"), "sun": ("sun", "sunny", "hot"),
             "autumn": ("autumn", "leaves")}  # fmt: skip
DAY_ANSWERS = {"snow": "There was snow everywhere.", "rain": "It was raining.",
               "wind": "It was very windy.", "sun": "It was hot and sunny.",
               "autumn": "It was a cool autumn day."}  # fmt: skip
# words a story's required words are taken from: the pools of concrete things
WORD_POOLS = ("critter", "treat", "snack", "smell", "noise", "flower", "weather", "season")
STOP_WORDS = frozenset(
    "there their would could about after again every other where which while these those "
    "thought looked started little before things through under around always never named "
    "called".split()
)
KINDS = ("write", "questions", "summary", "continue", "title")
# Questions weigh most: their replies are a few tokens each (a story reply, a few hundred), so
# they are asked in most conversations and several at a time, or the loss hardly sees them.
KIND_WEIGHTS = (0.25, 0.5, 0.1, 0.05, 0.1)


# ---------------------------------------------------------------------------------------------
# Mechanical checks: the same ones pick the constraints, test the data and score a model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One thing a reply must do, checked mechanically.

    what: name, gender (the first "he"/"she" of the reply is the hero's), pet, friend, place,
    lost, word (constraints on a written story),
    answer (one of words in the reply, and no "the story does not say") or unknown (the reply
    says the story does not tell)."""

    what: str
    words: tuple[str, ...] = ()


def has_word(text: str, word: str) -> bool:
    """word (or phrase) in text as whole words, ignoring case."""
    return re.search(r"\b" + re.escape(word) + r"\b", text, re.IGNORECASE) is not None


def says_unknown(reply: str) -> bool:
    low = reply.lower().replace("\u2019", "'")
    return any(m in low for m in UNKNOWN_MARKERS)


def holds(check: Check, reply: str) -> bool:
    """Whether reply meets check."""
    if check.what == "unknown":
        return says_unknown(reply)
    if check.what == "answer":
        return any(has_word(reply, w) for w in check.words) and not says_unknown(reply)
    if check.what == "gender":  # the first "he" or "she" is the hero's (who comes first)
        first = re.search(r"\b(he|she)\b", reply, re.IGNORECASE)
        return first is not None and first.group(1).lower() == check.words[0]
    found = all(has_word(reply, w) for w in check.words)
    if check.what == "lost":
        return found and any(has_word(reply, w) for w in LOSS_WORDS)
    return found


# ---------------------------------------------------------------------------------------------
# Facts, in the words the templates use
# ---------------------------------------------------------------------------------------------


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _title_case(text: str) -> str:
    """Each word capitalised but the small ones ("the big slide" -> "the Big Slide"): a
    title's template capitalises its own first word."""
    small = {"a", "an", "the", "and", "of", "to", "in", "for", "at", "on"}
    return " ".join(w if w in small else _cap(w) for w in text.split(" "))


def head(phrase: str) -> str:
    """A phrase's last word: what a reply must name ("the town square" -> "square")."""
    return re.findall(r"[A-Za-z]+", phrase)[-1]


class Facts(dict):
    """A story's facts for str.format_map: {Key} capitalises, {a_key} adds a/an."""

    def __missing__(self, key: str) -> str:
        if key[0].isupper():
            return _cap(self[key[0].lower() + key[1:]])
        if key.startswith("a_"):
            value = self[key[2:]]
            return ("an " if value[:1] in "aeiou" else "a ") + value
        raise KeyError(key)


def facts_of(told: Told) -> Facts:
    """The story's values and the few the plot implies (a race's end, the wish, the day)."""
    f = Facts(told.values)
    events = told.events
    if "race" in events:
        winner = {"won": f["name"], "lost": f["friend"]}.get(events["race"])
        f["race_end"] = f"{winner} won" if winner else "they finished together"
        f["winner"] = winner or ""
    if "wish" in events:
        f["wish_for"] = WISH_FOR[events["wish"]]
    if "weather" in events:
        f["daykind"] = DAY_KINDS[events["weather"]]
    if "bday" in f:
        f["bday_s"] = f["bday"] + "'s"
    if "fear" in f:
        f["fear"] = f["fear"].removesuffix(" next door")
    f["spot"] = next((v for k, v in told.drawn if k == "found_spot"), "")
    return f


def tells(told: Told, key: str) -> bool:
    """Whether the story's text uses the value of key."""
    return key in told.used


def told_place(told: Told) -> bool:
    return tells(told, "place") or tells(told, "at_place")


def has_held_out_name(told: Told) -> bool:
    v = told.values
    return bool({v["name"], v["friend"], v["pet"]} & HELD_OUT_NAMES)


# ---------------------------------------------------------------------------------------------
# Writing a story to order
# ---------------------------------------------------------------------------------------------


def required_words(told: Told, rng: random.Random) -> list[str]:
    """One or two words of the story for a "use the word" constraint: a concrete thing it
    drew when there is one, else a longer word of its text."""
    text, names = told.text, {told.values["name"], told.values["friend"], told.values["pet"]}
    drawn = sorted({w for k, v in told.drawn if k in WORD_POOLS for w in v.split() if len(w) >= 4})
    drawn = [w for w in drawn if w.isalpha() and w not in STOP_WORDS and has_word(text, w)]
    plain = sorted({w for w in re.findall(r"\b[a-z]{5,}\b", text) if w not in STOP_WORDS} - names)
    pool = drawn if drawn and rng.random() < 0.7 else plain
    return rng.sample(pool, min(len(pool), 1 if rng.random() < 0.5 else 2))


def write_constraints(told: Told, f: Facts, rng: random.Random) -> list[tuple[str, Check]]:
    """The constraints a request may state (the table of its phrasing, its check), each kept
    only when the story meets its check: the story is then a right reply by construction."""
    v = told.values
    options: list[tuple[str, Check]] = []
    if tells(told, "pet") and tells(told, "pkind"):
        options.append(("c.pet", Check("pet", (v["pet"], v["pkind"]))))
    if told_place(told):
        options.append(("c.place", Check("place", (head(v["place"]),))))
    if told.plot == "lost_and_found":
        options.append(("c.lost", Check("lost", (v["thing"],))))
    if tells(told, "friend") and rng.random() < 0.5:
        options.append(("c.friend", Check("friend", (v["friend"],))))
    chosen = [o for o in options if rng.random() < 0.6]
    words = required_words(told, rng) if rng.random() < 0.7 else []
    if words:
        f["w1"], f["w2"] = words[0], words[-1]
        table = "c.words" if len(words) == 2 else "c.word"
        chosen.append((table, Check("word", tuple(words))))
    rng.shuffle(chosen)
    return [(t, c) for t, c in chosen if holds(c, told.text)]


def hero_checks(told: Told) -> list[Check]:
    checks = [Check("name", (told.values["name"],)), Check("gender", (told.values["he"],))]
    return [c for c in checks if holds(c, told.text)]


def write_request(told: Told, rng: random.Random, asks: dict) -> tuple[str, list[Check]]:
    """The request for this story (the hero, then constraints) and every check it states."""
    f = facts_of(told)
    constraints = write_constraints(told, f, rng)
    parts = [rng.choice(asks["write"]).format_map(f)]
    parts += [rng.choice(asks[table]).format_map(f) for table, _ in constraints]
    return " ".join(parts), hero_checks(told) + [c for _, c in constraints]


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """A question about a story: its phrasing table, the replies that answer it, its check."""

    table: str
    replies: tuple[str, ...]
    check: Check


def _known(table: str, key: str, *words: str) -> Question:
    return Question(table, ANSWERS[key], Check("answer", words))


def _unknown(table: str, key: str) -> Question:
    return Question(table, UNKNOWN + UNKNOWN_ABOUT[key], Check("unknown"))


NOTHING_LOST = ("race", "trip", "growing", "birthday", "new_friend", "fear")


def cast_questions(told: Told) -> list[Question]:
    """Questions about the cast: the hero, the friend, the pet, age and the thing's colour."""
    v = told.values
    out = [_known("q.who", "who", v["name"])]
    out.append(
        _known("q.friend", "friend", v["friend"])
        if tells(told, "friend")
        else _unknown("q.friend", "friend")
    )
    out.append(_known("q.pet", "pet", v["pet"]) if tells(told, "pet") else _unknown("q.pet", "pet"))
    if tells(told, "pet") and tells(told, "pkind"):
        out.append(_known("q.pkind", "pkind", v["pkind"]))
    out.append(_known("q.age", "age", v["age"]) if tells(told, "age") else _unknown("q.age", "age"))
    if tells(told, "cthing") or tells(told, "fthing"):
        out.append(_known("q.colour", "colour", v["tcol"]))
    if told.plot in NOTHING_LOST:
        out.append(_unknown("q.lost", "lost"))
    return out


def plot_questions(told: Told, f: Facts) -> list[Question]:
    """Questions about what happened (what was lost, who won, how it ended), by plot."""
    plot, v, out = told.plot, told.values, []
    if plot == "lost_and_found":
        out += [_known("q.lost", "lost", v["thing"]), _known("q.finder", "finder", v["helper"])]
        out += [_known("q.end", "finder", v["helper"]), _where(told)]
        if f["spot"]:
            out.append(_known("q.spot", "spot", head(f["spot"])))
    elif plot == "fear":
        out.append(_known("q.fear", "fear", head(f["fear"])))
        out.append(_known("q.end", "end_fear", head(f["fear_did"])))
    elif plot == "trip":
        out.append(_known("q.trip", "trip", head(v["dest"])))
    elif plot == "race":
        words = (f["winner"],) if f["winner"] else ("together", "nobody")
        reply = "{winner} won the race." if f["winner"] else "Nobody won. They finished together."
        out.append(Question("q.race", (reply,), Check("answer", words)))
        out.append(Question("q.end", ("{Race_end}.", reply), Check("answer", words)))
    elif plot == "making":
        out.append(_known("q.make", "make", head(v["make_the"])))
    elif plot == "growing":
        out.append(_known("q.plant", "plant", head(v["seed"].removesuffix(" seed"))))
    elif plot == "birthday":
        out.append(_known("q.bday", "bday", v["bday"]))
    elif plot == "helping":
        out.append(_known("q.help", "help", head(v["hwho"])))
    elif plot == "wish":
        wish = told.events["wish"]
        out.append(Question("q.wish", (WISH_ANSWERS[wish],), Check("answer", WISH_WORDS[wish])))
    elif plot == "weather":
        day = told.events["weather"]
        out.append(Question("q.weather", (DAY_ANSWERS[day],), Check("answer", DAY_WORDS[day])))
    elif plot == "sharing":
        out.append(_known("q.share", "share", v["thing"]))
    elif plot == "new_friend":
        out.append(_known("q.newfriend", "newfriend", v["friend"]))
    elif plot == "lesson":
        out.append(_known("q.warn", "warn", v["parent"]))
    return out


def _where(told: Told) -> Question:
    place = told.values["place"]
    replies = ("{He} went to {place}.", "To {place}.", "{name} was {at_place}.")
    return Question("q.where", replies, Check("answer", (head(place),)))


def questions(told: Told) -> list[Question]:
    """Every question this story can answer (or can say it does not tell)."""
    f = facts_of(told)
    found = cast_questions(told) + plot_questions(told, f)
    if told.plot == "race" and told_place(told):
        found.append(_where(told))
    return found


def answer(question: Question, told: Told, rng: random.Random) -> str:
    return rng.choice(question.replies).format_map(facts_of(told))


# ---------------------------------------------------------------------------------------------
# Summaries, continuations, titles
# ---------------------------------------------------------------------------------------------


def summary(told: Told, rng: random.Random) -> str:
    f = facts_of(told)
    if told.plot == "lesson":
        return LESSON_SUMMARIES[int(told.events["lesson"])].format_map(f)
    if told.plot == "race" and tells(told, "goal") and rng.random() < 0.5:
        return "{name} and {friend} had a race to {goal}, and {race_end}.".format_map(f)
    return rng.choice(SUMMARIES[told.plot]).format_map(f)


def title(told: Told, rng: random.Random) -> str:
    f = facts_of(told)
    for key in ("thing", "cthing", "fear", "dest", "hwho", "make", "make_the", "plant", "daykind"):
        if key in f:
            f[key] = _title_case(f[key])
    return rng.choice(TITLES[told.plot]).format_map(f)


# a sentence may end the start of a story after "." or '."' (a '!"' or '?"' may have a
# speech tag next: '"Look!" Tom shouted.')
SENTENCE_END = re.compile(r'(?:(?<=[.!?])|(?<=\."))\s+(?="?[A-Z])')


def cut(text: str, rng: random.Random) -> tuple[str, str]:
    """The story's start (a third to two thirds of its sentences) and the rest."""
    ends = [m.end() for m in SENTENCE_END.finditer(text) if text[: m.end()].count('"') % 2 == 0]
    lo, hi = len(ends) // 3, max(len(ends) // 3, (2 * len(ends)) // 3)
    at = ends[rng.randint(lo, hi)] if ends else len(text) // 2
    return text[:at].rstrip(), text[at:].strip()


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    out = []
    for user, assistant in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


def conversation(told: Told, rng: random.Random, asks: dict) -> list[dict]:
    """One conversation about the story, of a kind drawn by KIND_WEIGHTS."""
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    f = facts_of(told)
    story = told.text
    if kind == "write":
        request, _ = write_request(told, rng, asks)
        pairs = [(request, story)]
    elif kind == "questions":
        # half the "does not say" questions dropped: about a quarter of those asked
        found = [q for q in questions(told) if q.check.what != "unknown" or rng.random() < 0.5]
        asked = rng.sample(found, min(len(found), rng.choice((2, 3, 4, 5))))
        first, *more = [
            (rng.choice(asks[q.table]).format_map(f), answer(q, told, rng)) for q in asked
        ]
        frame = rng.choice(asks["frame"])
        pairs = [(frame.format(story=story, question=first[0]), first[1]), *more]
    elif kind == "summary":
        pairs = [(rng.choice(asks["summary"]).format(story=story), summary(told, rng))]
    elif kind == "continue":
        start, rest = cut(story, rng)
        pairs = [(rng.choice(asks["continue"]).format(start=start), rest)]
    else:
        pairs = [(rng.choice(asks["title"]).format(story=story), _title_reply(told, rng))]
    if kind in ("write", "continue") and rng.random() < 0.2:
        pairs.append((rng.choice(asks["title.more"]), _title_reply(told, rng)))
    return _turns(*pairs)


def _title_reply(told: Told, rng: random.Random) -> str:
    return rng.choice(TITLE_REPLIES).format(title=title(told, rng))


def conversations(seed: int) -> Iterator[list[dict]]:
    """Endless training conversations, deterministic from seed; none holds a held-out name or
    phrasing. Their stories come from a stream of their own (not builtin:stories' stories)."""
    rng = random.Random(f"story-chat:{seed}")
    asks = phrasings(held_out=False)
    for told in stories.iter_told(f"story-chat-stories:{seed}"):
        if not has_held_out_name(told):
            yield conversation(told, rng, asks)


def records(mb: float, seed: int) -> Iterator[dict]:
    """{"messages": [...]} records until their text reaches mb megabytes (UTF-8)."""
    total, limit = 0, int(mb * 1e6)
    for messages in conversations(seed):
        if total >= limit:
            return
        total += sum(len(m["content"].encode("utf-8")) for m in messages)
        yield {"messages": messages}


# ---------------------------------------------------------------------------------------------
# The held-out prompts (for benchmarks/quality_chat.py)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A held-out prompt: kind (write or question), the messages to send, what the reply must
    meet, the reply the generator would give, and whether its names are held out."""

    kind: str
    messages: list[dict]
    checks: tuple[Check, ...]
    reference: str
    held_out_name: bool


def _probe(told: Told, kind: str, rng: random.Random, asks: dict) -> Probe:
    held = told.values["name"] in HELD_OUT_NAMES
    if kind == "write":
        request, checks = write_request(told, rng, asks)
        return Probe(kind, [{"role": "user", "content": request}], tuple(checks), told.text, held)
    found = questions(told)
    unknown = [q for q in found if q.check.what == "unknown"]
    known = [q for q in found if q.check.what != "unknown"]
    q = rng.choice(unknown if unknown and rng.random() < 0.25 else known)
    frame = rng.choice(asks["frame"])
    prompt = frame.format(
        story=told.text, question=rng.choice(asks[q.table]).format_map(facts_of(told))
    )
    user = [{"role": "user", "content": prompt}]
    return Probe("question", user, (q.check,), answer(q, told, rng), held)


def held_out(n: int, seed: int = 0) -> list[Probe]:
    """n prompts in held-out phrasings, alternately a story to write and a question; every
    other pair's hero has a held-out name (the rest have none), so both are measured apart."""
    rng = random.Random(f"story-chat-held-out:{seed}")
    asks = phrasings(held_out=True)
    out: list[Probe] = []
    for told in stories.iter_told(f"story-chat-held-out-stories:{seed}"):
        if len(out) >= n:
            break
        want_held = (len(out) // 2) % 2 == 1
        held = told.values["name"] in HELD_OUT_NAMES
        if held != want_held or (not held and has_held_out_name(told)):
            continue
        out.append(_probe(told, ("write", "question")[len(out) % 2], rng, asks))
    return out
