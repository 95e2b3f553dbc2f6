"""The built-in synthetic corpus ``builtin:stories``: simple children's stories in plain English.

It exists so that training runs, demos and tests have a corpus that needs no network and is
byte-for-byte deterministic from a seed. The stories are written by the generator below from
word lists and sentence templates; no text is copied from any data set.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gptcli.files import write_atomic
from gptcli.recipe import EOT

# The generator's output version: run folders fingerprint a builtin: corpus by it (not by this
# file's bytes, so a reformat changes nothing). Bump it whenever the generated text changes;
# tests/test_stories.py pins a hash of a fixed sample to it, so a forgotten bump fails there.
VERSION = 1

# ---------------------------------------------------------------------------------------------
# Cast and setting
# ---------------------------------------------------------------------------------------------

BOY_NAMES = (
    "Tom", "Ben", "Sam", "Leo", "Jack", "Tim", "Finn", "Noah", "Liam", "Oscar", "Jake", "Luke",
    "Owen", "Eli", "Adam", "Dan", "Ryan", "Kai", "Theo", "Hugo", "Felix", "Oliver", "Henry",
    "Peter", "Paul", "Mark", "Nick", "Josh", "Jim", "Bob", "Billy", "Timmy", "Joe", "Lucas",
    "Ethan", "Mason", "Caleb", "Isaac", "Jacob", "Ali", "Omar", "Ravi", "Arjun", "Kenji", "Hiro",
    "Carlos", "Diego", "Mateo", "Pablo", "Ivan", "Milo", "Ollie", "Toby", "Alfie", "Harry",
    "George", "Freddie", "Archie", "Ned", "Jonah", "Zack", "Ezra", "Simon", "Victor", "Dylan",
    "Evan", "Gus", "Hank", "Louis", "Marco", "Andy", "Bruno", "Arthur", "Edward", "Frank",
    "Hector", "Jasper", "Kevin", "Leon", "Miles", "Nathan", "Otto", "Patrick", "Rafael", "Seth",
    "Tyler", "Umar", "Vincent", "Walter", "Yusuf", "Zane", "Benny", "Cody", "Danny", "Eddie",
)  # fmt: skip
GIRL_NAMES = (
    "Lily", "Mia", "Sue", "Anna", "Emma", "Lucy", "Sara", "Amy", "Ella", "Zoe", "Ruby", "Rosie",
    "Ivy", "Grace", "Chloe", "Sophie", "Lola", "Nina", "Maya", "Ava", "Olivia", "Isla", "Hannah",
    "Jane", "Kate", "Molly", "Daisy", "Poppy", "Holly", "Jenny", "Susie", "Lisa", "Tina", "Rose",
    "Alice", "Clara", "Elsa", "Freya", "Hazel", "Iris", "Julia", "Laura", "Mary", "Nora", "Olga",
    "Priya", "Aisha", "Fatima", "Leila", "Yuki", "Mei", "Sofia", "Lucia", "Elena", "Rita",
    "Wendy", "Bella", "Stella", "Luna", "Sadie", "Tessa", "Zara", "Kira", "Nell", "Beth",
    "Megan", "Abby", "Eva", "Maria", "Jess", "Amira", "Edie", "Anya", "Bonnie", "Cora", "Dora",
    "Evie", "Fiona", "Gemma", "Heidi", "Isabel", "Jade", "Katie", "Lena", "Mila", "Nadia",
    "Polly", "Rachel", "Sally", "Tara", "Vera", "Willow", "Yasmin", "Greta", "Millie",
)  # fmt: skip
PRONOUNS = {
    "m": ("he", "him", "his", "himself", "boy"),
    "f": ("she", "her", "her", "herself", "girl"),
}
PET_NAMES = (
    "Max", "Buddy", "Rex", "Spot", "Coco", "Pip", "Bubbles", "Fluffy", "Patch", "Whiskers",
    "Socks", "Biscuit", "Peanut", "Pepper", "Ginger", "Muffin", "Button", "Nibbles", "Snowy",
    "Sunny", "Rusty", "Scout", "Ziggy", "Dot", "Tiny", "Boots", "Honey", "Pebble", "Toffee",
    "Mittens", "Hoppy", "Squeak", "Noodle", "Bean", "Fudge", "Cookie", "Ollo", "Bingo",
    "Shadow", "Pumpkin", "Marshmallow", "Jelly", "Pickles", "Waffles", "Acorn", "Clover",
)  # fmt: skip
# (kind, how it moves, the sound it makes)
PETS = (
    ("dog", "ran", "barked"),
    ("puppy", "ran", "barked"),
    ("cat", "ran", "meowed"),
    ("kitten", "ran", "mewed"),
    ("bunny", "hopped", "twitched {phis} nose"),
    ("duck", "waddled", "quacked"),
    ("bird", "flew", "chirped"),
    ("frog", "hopped", "croaked"),
    ("mouse", "ran", "squeaked"),
    ("hamster", "ran", "squeaked"),
    ("turtle", "crawled", "blinked {phis} eyes"),
    ("pony", "trotted", "neighed"),
    ("lamb", "ran", "said baa"),
    ("owl", "flew", "hooted"),
    ("fox", "ran", "yipped"),
    ("squirrel", "ran", "chattered"),
    ("hedgehog", "ran", "sniffed the air"),
    ("parrot", "flew", "squawked"),
    ("goose", "waddled", "honked"),
    ("pig", "trotted", "oinked"),
    ("goat", "trotted", "bleated"),
    ("chick", "ran", "peeped"),
    ("rabbit", "hopped", "wiggled {phis} long ears"),
    ("donkey", "trotted", "brayed"),
    ("hen", "ran", "clucked"),
    ("guinea pig", "ran", "squeaked"),
    ("calf", "trotted", "mooed"),
    ("tortoise", "crawled", "poked out {phis} head"),
)
PET_ADJS = ("little", "fluffy", "small", "funny", "friendly", "playful", "fat", "clever", "tiny")
THINGS = (
    "ball", "kite", "teddy bear", "doll", "toy car", "toy boat", "toy train", "book", "hat",
    "scarf", "drum", "whistle", "yo-yo", "balloon", "robot", "umbrella", "shell", "ring",
    "necklace", "blanket", "backpack", "bucket", "spinning top", "flute", "bell", "truck",
    "rocket", "jump rope", "crown", "magic wand", "lunch box", "marble", "toy horse", "ribbon",
    "bracelet", "music box", "rubber duck", "toy plane", "puppet", "paint box", "snow globe",
    "toy dinosaur", "storybook", "pinwheel", "sun hat", "toy soldier", "hair clip", "toy piano",
    "harmonica", "lantern", "telescope", "wooden sword", "cape", "flashlight", "toy rabbit",
    "sailboat", "kazoo", "xylophone", "pencil", "coin purse", "toy bus",
)  # fmt: skip
THING_ADJS = ("shiny", "little", "big", "soft", "new", "old", "pretty", "small", "bright", "lovely")
COLOURS = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black", "brown",
    "gold", "silver", "gray", "light blue", "dark green", "violet", "golden",
)  # fmt: skip
# (the place, where one is when there)
PLACES = (
    ("the park", "in the park"),
    ("the beach", "at the beach"),
    ("the forest", "in the forest"),
    ("the woods", "in the woods"),
    ("the lake", "by the lake"),
    ("the farm", "on the farm"),
    ("the garden", "in the garden"),
    ("the meadow", "in the meadow"),
    ("the river", "by the river"),
    ("the pond", "by the pond"),
    ("the playground", "at the playground"),
    ("the hill", "on the hill"),
    ("the field", "in the field"),
    ("the orchard", "in the orchard"),
    ("the town square", "in the town square"),
    ("the backyard", "in the backyard"),
)
PARENTS = ("Mom", "Mom", "Mom", "Dad", "Dad", "Dad", "Grandma", "Grandpa")
TRAITS = (
    "kind", "brave", "curious", "happy", "shy", "clever", "cheerful", "gentle", "playful",
    "friendly", "busy", "careful", "funny", "smart", "quiet", "lively", "polite", "helpful",
    "silly", "sweet", "honest", "patient", "chatty", "bold", "thoughtful", "jolly", "dreamy",
)  # fmt: skip

# Pools: drawn afresh on every use of ``{key}`` in a template; entries may hold templates.
POOLS: dict[str, tuple[str, ...]] = {
    "then": ("Then ", "After a while, ", "Soon, ", "Later, ", "A little later, ", "Before long, ",
             "After that, ", ""),
    "suddenly": ("Suddenly, ", "All of a sudden, ", "Just then, ", "But then ", "Then "),
    "when": ("One day, ", "One {daypart}, ", "One {weather} {daypart}, ", "One {weather} day, ",
             "Then one day, ", "On {a_weather} {daypart}, ", "Last {season}, ",
             "One {season} day, "),
    "at_last": ("At last, ", "Finally, ", "In the end, ", "After a long time, "),
    "good": ("happy", "glad", "cheerful", "joyful", "happy", "pleased"),
    "very": ("", "very ", "so ", "really ", ""),
    "bad": ("sad", "upset", "unhappy", "worried", "gloomy", "sad"),
    "angry": ("angry", "cross", "upset", "grumpy", "mad"),
    "excited": ("excited", "thrilled", "happy", "eager"),
    "happily": ("happily", "with a big smile", "for a long time", "all by {himself}", "joyfully",
                "again and again"),
    "sadly": ("sadly", "slowly", "with a frown", "in tears", "without a word"),
    "quickly": ("quickly", "as fast as {he} could", "right away", "at once"),
    "slowly": ("slowly", "carefully", "quietly", "very slowly", "on tiptoe"),
    "slowly_": ("Slowly, ", "Very slowly, ", "Carefully, ", "Little by little, ", "Bravely, "),
    "smiled": ("smiled", "laughed", "giggled", "grinned", "clapped {his} hands", "beamed"),
    "critter": ("bird", "butterfly", "squirrel", "rabbit", "frog", "ladybug", "snail", "bee",
                "duck", "beetle", "dragonfly", "mouse", "ant", "robin", "caterpillar", "worm",
                "moth", "hedgehog", "deer", "sparrow", "grasshopper", "lizard", "crow", "pigeon",
                "chipmunk", "toad", "goose", "swan", "bumblebee"),
    "critter_doing": ("sitting on a leaf", "looking at {name}", "resting in the sun",
                      "hiding in the grass", "singing on a branch", "eating a seed",
                      "busy with its work", "sitting very still", "playing in the leaves"),
    "sky2": ("the sun was shining", "the sky was blue", "the birds were singing",
             "a soft wind was blowing", "the grass was green and soft",
             "big white clouds were floating by", "the bees were buzzing"),
    "flower": ("red", "yellow", "pink", "purple", "white", "blue", "orange"),
    "noise": ("birds singing", "a dog barking far away", "children laughing",
              "the wind in the trees", "a bell ringing", "water splashing", "a cow mooing",
              "leaves rustling", "a train whistle"),
    "smile_adj": ("big", "bright", "warm", "happy", "wide", "sunny"),
    "heart_adj": ("kind", "big", "warm", "gentle", "good", "caring"),
    "young": ("little", "young", "small", "cheerful", "bright", "sweet"),
    "critter_adj": ("little ", "tiny ", "funny ", "pretty ", "", "", "busy ", "small "),
    "critter_full": ("{critter_adj}{critter}",),
    "daypart": ("morning", "afternoon", "day", "evening"),
    "weather": ("sunny", "bright", "warm", "windy", "cool", "cloudy", "lovely", "beautiful",
                "quiet", "sleepy", "golden"),
    "season": ("spring", "summer", "autumn", "winter"),
    "bushes": ("bushes", "tall grass", "trees", "flowers", "long grass"),
    "under": ("the bench", "a big bush", "the picnic table", "the old steps", "a pile of sticks",
              "the hedge", "the flower bed"),
    "behind": ("a tree", "the fence", "a big rock", "the shed", "the gate", "a wall", "the swings"),
    "beside": ("the pond", "the path", "a log", "the tall flowers", "the water", "the sandbox",
               "the old well"),
    "found_spot": ("under a pile of leaves", "behind a big rock", "in the tall grass",
                   "next to the pond", "under a bush", "beside an old log", "near the gate",
                   "on a low branch", "in a muddy puddle", "under a bench", "inside a hollow log",
                   "between two flower pots"),
    "small": ("small", "little", "quiet", "pretty", "sleepy", "busy", "friendly", "tiny"),
    "town": ("town", "village"),
    "home": ("in {a_small} house near the woods", "in a little house by the sea",
             "on a big farm", "in a tall house in the city", "in a cozy cottage by the river",
             "in {a_small} {town} at the foot of a hill", "in a yellow house on a quiet street",
             "next to a big park", "in a blue house with a red door", "in {a_small} {town}",
             "in an old house with a big garden", "near {a_small} lake"),
    "hobby": ("play outside", "draw pictures", "sing songs", "read books", "run and jump",
              "build things", "look at the stars", "play in the mud", "splash in puddles",
              "dance", "climb trees", "help in the garden", "make up songs", "play pretend",
              "watch the birds", "count the clouds", "play hide and seek", "ride {his} bike",
              "paint with bright colors", "collect pretty stones", "bake with {his} family",
              "play the piano", "skip and hop", "tell funny jokes", "blow bubbles",
              "play with toy cars", "look for bugs", "pick flowers"),
    "age": ("three", "four", "five", "six", "seven", "five", "four"),
    "treat": ("ice cream cone", "apple", "cookie", "orange", "lollipop", "cup of lemonade",
              "slice of cake", "warm muffin", "bag of popcorn", "little cake", "banana",
              "cupcake", "pear", "strawberry tart", "glass of milk", "pretzel"),
    "snack": ("sandwiches", "apples", "cookies", "grapes", "cheese", "bread and jam", "carrots",
              "crackers", "cherries", "plums", "biscuits", "peanut butter toast", "pancakes",
              "nuts and raisins", "berries", "buns"),
    "hero": ("{name}", "{he}", "{he}"),
    "nature": ("tree and flower", "bird and bug", "path and puddle", "stone and stick",
               "cat and dog", "tree and bush"),
    "smell": ("rain", "flowers", "pine trees", "the sea", "cut grass", "warm bread", "apples"),
    "meal": ("dinner", "supper", "lunch", "bed", "their bath"),
    "deco": ("stars", "hearts", "flowers", "moons", "dots", "glitter", "jewels"),
    "cake": ("chocolate", "strawberry", "lemon", "banana", "carrot", "vanilla", "honey"),
    "weeks_end": ("By the end of the summer", "A few weeks later", "Before long",
                  "Not long after", "By autumn", "One sunny morning"),
    "weeks": ("Weeks went by", "Days turned into weeks", "The summer went on",
              "Many days passed", "Time went by"),
    "bigger": ("bigger and stronger", "taller and taller", "greener and stronger",
               "bigger every day"),
    "water": ("some water", "a little drink", "a cup of water", "some fresh water"),
    "hard": ("hard", "very hard", "all {daypart}", "together", "for a long time"),
    "morning": ("said hello to the sun", "ran to the window to see the sky",
                "ate a big bowl of oats", "sang a little song", "fed the birds in the garden",
                "jumped out of bed with a smile", "counted the birds on the roof"),
    "hug": ("gave {him} a big hug", "hugged {him} tight", "held {him} close",
            "gave {him} a warm hug"),
    "night": ("That night, ", "When night came, ", "At bedtime, ", "Later that night, "),
    "sky": ("the sun was shining", "the sky was blue", "the birds were singing",
            "the flowers were in bloom", "a soft wind was blowing", "the air smelled sweet",
            "the trees were full of birds", "the clouds looked like sheep"),
}  # fmt: skip

SAY_VERBS = ("said", "said", "said", "said", "whispered", "said")
EXCLAIM_VERBS = ("shouted", "cried", "said", "yelled", "exclaimed", "called")
ASK_VERBS = ("asked", "asked", "asked", "asked")
REPLY_VERBS = ("replied", "answered", "said", "said")
SAY_TAILS = (" with a smile", " softly", " kindly", " with a grin", " quietly", " gently")

# ---------------------------------------------------------------------------------------------
# Template machinery
# ---------------------------------------------------------------------------------------------

# Each story picks a cast at the start (a child with a name and pronouns, a friend, an animal
# friend, a favourite object, a place, a grown-up) and keeps referring back to them, as in
# TinyStories, so that a small model can learn to copy names and objects through a story.
# Templates use {he}/{him}/{his}/{himself} for the hero's pronouns (she/her/her/herself for a
# girl), {fhe}... for the friend, {phe}... for the animal and {hhe}... for a stranger. A key that
# is not a fixed story value is drawn afresh from POOLS on every use (pool entries may hold
# templates themselves); {a_key} adds "a"/"an", and a capitalised key capitalises the value.

BREAK = ""  # marks a place where a new paragraph may start


def _cap(text: str) -> str:
    """Capitalise the first letter (after an opening quote, if any)."""
    if text[:1] == '"':
        return '"' + text[1:2].upper() + text[2:]
    return text[:1].upper() + text[1:]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ", and " + items[-1]


class _Story(dict):
    """The context of one story: fixed cast values plus pools drawn on every use."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        self.genders: set[str] = set()
        self.met: set[str] = set()
        self.lessons: tuple[str, ...] = ()
        # what the plot decided beyond the story's values (a race's outcome, the wish made):
        # recorded for the facts, never read by a template, so the text does not depend on it
        self.events: dict[str, str] = {}

    def __missing__(self, key: str) -> str:
        if key[0].isupper():
            return _cap(self[key[0].lower() + key[1:]])
        if key.startswith("a_"):
            return _article(self[key[2:]])
        value = self.rng.choice(POOLS[key])
        if "{" in value:
            value = value.format_map(self)
        return value

    def fill(self, template: str) -> str:
        return template.format_map(self)

    def pick(self, templates: tuple[str, ...]) -> str:
        """One sentence (or a few) from a random template, capitalised."""
        return _cap(self.fill(self.rng.choice(templates)))

    def maybe(self, p: float, templates: tuple[str, ...]) -> list[str]:
        return [self.pick(templates)] if self.rng.random() < p else []

    def say(
        self,
        who: str,
        lines: tuple[str, ...],
        pronoun: str | None = None,
        reply: bool = False,
    ) -> str:
        """A line of dialogue by ``who`` in one of several quote layouts."""
        rng = self.rng
        line = _cap(self.fill(rng.choice(lines)))
        end = line[-1]
        if end == "?":
            verb = rng.choice(ASK_VERBS)
        elif end == "!":
            verb = rng.choice(EXCLAIM_VERBS)
        else:
            verb = rng.choice(REPLY_VERBS if reply else SAY_VERBS)
        tail = ""
        if end != "!" and rng.random() < 0.2:
            tail = rng.choice(SAY_TAILS)
        form = rng.random()
        if form < 0.3:
            return f'{_cap(who)} {verb}{tail}, "{line}"'
        if end == ".":
            line = line[:-1] + ","
        if form < 0.65 or pronoun is None:
            return f'"{line}" {verb} {who}{tail}.'
        if form < 0.8:
            return f'"{line}" {who} {verb}{tail}.'
        return f'"{line}" {pronoun} {verb}{tail}.'

    def hero_says(self, lines: tuple[str, ...], reply: bool = False) -> str:
        clear = "friend" not in self.met or self["he"] != self["fhe"]
        return self.say(self["name"], lines, self["he"] if clear else None, reply)

    def friend_says(self, lines: tuple[str, ...], reply: bool = False) -> str:
        clear = self["he"] != self["fhe"]
        return self.say(self["friend"], lines, self["fhe"] if clear else None, reply)

    def parent_says(self, lines: tuple[str, ...], reply: bool = False) -> str:
        return self.say(self["parent"], lines, None, reply)

    def meet(self, who: str) -> list[str]:
        """The sentence that introduces the friend or the animal, the first time only."""
        if who in self.met:
            return []
        self.met.add(who)
        if who == "pet":
            self.genders.add(self["pgender"])
            return [self.pick(PET_INTRO)]
        self.genders.add(self["fgender"])
        return [self.pick(FRIEND_INTRO)]


class _RecordedStory(_Story):
    """A story that records what its text is made of: the keys whose values a template put
    into the text, and every pool value drawn (in order). Kept apart from _Story so that
    builtin:stories pays nothing for it; the same rng calls give the same text."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.used: set[str] = set()
        self.drawn: list[tuple[str, str]] = []
        self.telling = 0  # > 0 while a template is being filled: reads then go into the text

    def __getitem__(self, key: str) -> str:
        value = super().__getitem__(key)
        if self.telling:
            self.used.add(key)
        return value

    def __missing__(self, key: str) -> str:
        value = super().__missing__(key)
        if key in POOLS:
            self.drawn.append((key, value))
        return value

    def fill(self, template: str) -> str:
        self.telling += 1
        try:
            return super().fill(template)
        finally:
            self.telling -= 1


def _set_pronouns(c: _Story, prefix: str, gender: str) -> None:
    he, him, his, himself, kid = PRONOUNS[gender]
    c[prefix + "he"] = he
    c[prefix + "him"] = him
    c[prefix + "his"] = his
    c[prefix + "himself"] = himself
    c[prefix + "kid"] = kid


def _cast(c: _Story) -> None:
    """Pick the characters, object and place that the whole story keeps referring to."""
    rng = c.rng
    gender = "m" if rng.random() < 0.5 else "f"
    c["name"] = rng.choice(BOY_NAMES if gender == "m" else GIRL_NAMES)
    _set_pronouns(c, "", gender)
    c.genders.add(gender)
    c["trait"] = rng.choice(TRAITS)
    c["age"] = rng.choice(POOLS["age"])
    c["home"] = c.fill(rng.choice(POOLS["home"]))
    c["hobby"] = c.fill(rng.choice(POOLS["hobby"]))

    c["fgender"] = fgender = "m" if rng.random() < 0.5 else "f"
    friend = c["name"]
    while friend == c["name"]:
        friend = rng.choice(BOY_NAMES if fgender == "m" else GIRL_NAMES)
    c["friend"] = friend
    _set_pronouns(c, "f", fgender)

    c["pgender"] = pgender = "m" if rng.random() < 0.5 else "f"
    _set_pronouns(c, "p", pgender)
    c["pet"] = rng.choice(PET_NAMES)
    c["pkind"], c["pmove"], sound = rng.choice(PETS)
    c["psound"] = sound.format_map(c)
    c["padj"] = rng.choice(PET_ADJS)

    thing = rng.choice(THINGS)
    colour = rng.choice(COLOURS)
    c["thing"] = thing
    c["tcol"] = colour
    c["cthing"] = f"{colour} {thing}"
    c["fthing"] = (
        f"{rng.choice(THING_ADJS)} {colour} {thing}" if rng.random() < 0.6 else c["cthing"]
    )
    c["place"], c["at_place"] = rng.choice(PLACES)
    c["parent"] = rng.choice(PARENTS)


# ---------------------------------------------------------------------------------------------
# Openings and closings
# ---------------------------------------------------------------------------------------------

ONCE_OPENERS = (
    "Once upon a time, there was {a_trait} little {kid} named {name}.",
    "Once upon a time, there was a {kid} called {name}.",
    "Once upon a time, in {a_small} {town}, there lived {a_trait} {kid} named {name}.",
    "Once upon a time, {a_trait} {kid} named {name} lived {home}.",
    "Once upon a time, there was {a_young} {kid}. {His} name was {name}.",
    "Once upon a time, there was {a_trait} {kid} named {name} who loved to {hobby}.",
)
ONE_DAY_OPENERS = (
    "One day, {a_trait} little {kid} named {name} woke up with a big smile.",
    "One day, {name} was feeling {very}{good}.",
    "One day, a {kid} named {name} was looking for something fun to do.",
    "One day, {a_trait} {kid} called {name} was playing outside.",
    "One day, {name} looked out of the window and saw that {sky}.",
)
OTHER_OPENERS = (
    "There was once {a_trait} {kid} named {name}.",
    "There was once a little {kid} called {name} who lived {home}.",
    "Long ago, in {a_small} {town}, there lived a {kid} named {name}.",
    "Long ago, there was {a_trait} {kid} called {name}.",
    "Every morning, {name} {morning}.",
    "{name} was {a_trait} {kid} who lived {home}.",
    "In {a_small} house {home_near}, there lived a {kid} named {name}.",
    "Not so long ago, there was a little {kid} called {name}.",
    "Once there was {a_trait} {kid} named {name}.",
    "{name} was {a_age}-year-old {kid} who loved to {hobby}.",
)
POOLS["home_near"] = ("near the woods", "by the sea", "at the end of a long road", "by a river",
                      "on a green hill", "next to a big park")  # fmt: skip
HERO_KEYS = ("hobby", "home", "trait", "age")
HERO_MORE = (
    "{he} was {age} years old.",
    "{he} loved to {hobby}.",
    "{he} lived with {his} family {home}.",
    "{he} had {a_smile_adj} smile and {a_heart_adj} heart.",
    "{his} favorite color was {tcol}.",
    "Everyone liked {him}, because {he} was so {trait}.",
    "{he} knew every {nature} near {his} house.",
    "{he} liked {tcol} things best of all.",
)
FRIEND_INTRO = (
    "{name} had a best friend named {friend}.",
    "{name}'s best friend was {a_fkid} named {friend}.",
    "{name} and {friend} were best friends.",
    "{friend} was {name}'s friend from next door.",
    "{name} had a good friend called {friend}, who lived down the street.",
)
PET_INTRO = (
    "{name} had {a_padj} {pkind} named {pet}.",
    "{his} best friend was {a_padj} {pkind} called {pet}.",
    "{name} lived with {his} {pkind}, {pet}.",
    "{name} had a pet {pkind}. {Phis} name was {pet}.",
    "{name} had {a_pkind} named {pet}, and they did everything together.",
)
CLOSE_LESSON = (
    "{name} learned that {lesson}.",
    "The moral of the story is that {lesson}.",
    "{Lesson}.",
    "And {name} never forgot that {lesson}.",
)
HAPPY_EVER = (
    "And they all lived happily ever after.",
    "The end.",
    "It was a day {name} would never forget.",
    "It had been a very good day.",
    "{name} went to bed happy that night.",
    "What a day it had been for {name}!",
)
SCENE = (
    "{sky}, and {sky2}.",
    "There were {flower} flowers everywhere.",
    "{a_critter_full} was {critter_doing} nearby.",
    "{name} could hear {noise} in the distance.",
    "It was {a_weather} {daypart}, and {sky}.",
    "The grass was wet with dew, and the air smelled of {smell}.",
)


def _opening(c: _Story) -> list[str]:
    rng = c.rng
    roll = rng.random()
    if roll < 0.38:
        out = [c.pick(ONCE_OPENERS)]
    elif roll < 0.6:
        out = [c.pick(ONE_DAY_OPENERS)]
        c["when"] = ""  # do not start the plot with a second "One day"
    else:
        out = [c.pick(OTHER_OPENERS)]
    # more about the hero, but nothing the first sentence has already said
    said = out[0]
    fresh = [t for t in HERO_MORE if not any(c[k] in said for k in HERO_KEYS if "{" + k in t)]
    if "smile" in said:
        fresh = [t for t in fresh if "smile" not in t]
    extra = rng.random()
    if extra < 0.55:
        out += [c.pick((t,)) for t in rng.sample(fresh, 2 if extra < 0.15 else 1)]
    return out


def _closing(c: _Story, lessons: tuple[str, ...]) -> list[str]:
    roll = c.rng.random()
    if roll < 0.4:
        c["lesson"] = c.rng.choice(lessons)
        return [c.pick(CLOSE_LESSON)]
    if roll < 0.5:
        return [c.pick(HAPPY_EVER)]
    return []


# ---------------------------------------------------------------------------------------------
# Plot 1: lost and found
# ---------------------------------------------------------------------------------------------

LOST_HAS = (
    "{name} had {a_fthing} that {he} loved very much.",
    "{name}'s favorite toy was {a_fthing}.",
    "{hero} had {a_fthing}, and {he} took it everywhere {he} went.",
    "{parent} had given {him} {a_fthing} for {his} birthday, and {he} loved it more than anything.",
    "{name} loved {his} {fthing} more than any other toy.",
)
LOST_GO = (
    "{when}{name} took the {thing} to {place}.",
    "{when}{name} went to play {at_place}, and {he} took {his} {thing} along.",
    "{when}{he} brought {his} {cthing} to {place}.",
    "{when}{name} and {parent} went to {place}, and the {thing} came too.",
)
LOST_GO_PET = (
    "{when}{name} and {pet} went to {place} to play with the {thing}.",
    "{when}{name} took {pet} and the {thing} to {place}.",
)
LOST_PLAY = (
    "{hero} played with it {happily}.",
    "{hero} played {at_place} all {daypart}.",
    "{hero} sat on the grass and played with the {thing}.",
    "The {daypart} was {weather}, and {name} had lots of fun.",
    "{hero} ran and laughed while {sky}.",
    "{hero} showed the {thing} to {a_critter_full} and {smiled}.",
)
LOST_GONE = (
    "But when it was time to go home, the {thing} was gone!",
    "{suddenly}{name} looked down, and {his} {thing} was not there.",
    "{hero} put the {thing} down to look at {a_critter_full}, and when {he} turned back, "
    "it was gone.",
    "But later, {name} could not find {his} {cthing} anywhere.",
    "When {he} reached for {his} {thing}, it was not there!",
    "{suddenly}{name} saw that {his} {thing} was missing.",
)
LOST_SAD = (
    "{name} felt {very}{bad}.",
    "{hero} was so {bad} that {he} began to cry.",
    "{his} eyes filled with tears.",
    "{name} sat down on the ground and felt {bad}.",
    "{name}'s lip began to shake.",
)
LOST_LINES = (
    "Where is my {thing}?",
    "Oh no! I lost my {thing}!",
    "I have to find my {cthing}!",
    "My {thing} is gone! What will I do?",
    "Has anyone seen my {cthing}?",
    "Where did my {thing} go?",
    "I need my {thing}. It is my favorite!",
)
LOST_SEARCH = (
    "{hero} looked under {under}, behind {behind}, and next to {beside}.",
    "{hero} looked everywhere, but {he} could not find it.",
    "{hero} searched high and low, but the {thing} was nowhere to be seen.",
    "{hero} looked under {under} and behind {behind}, but it was not there.",
    "{name} looked in the grass and under the trees, but the {thing} was not there.",
)
LOST_PET_HELP = (
    "{then}{pet} put {phis} nose to the ground and began to sniff.",
    "{then}{pet} {pmove} off into the {bushes}.",
    "{then}{pet} {psound} and {pmove} away toward {behind}.",
)
LOST_FRIEND_COME = (
    "{then}{name}'s friend {friend} came by.",
    "{then}{friend}, who lived next door, saw {name} and came over.",
    "{suddenly}{friend} walked up to {him}.",
)
FRIEND_HELP_LINES = (
    "Don't be sad, {name}. I will help you!",
    "I will help you look, {name}!",
    "Let's look together!",
    "Two pairs of eyes are better than one!",
    "Don't worry. We will find it!",
)
LOST_FOUND = (
    "{helper} found the {thing} {found_spot}!",
    "Look! {helper} saw something {tcol} {found_spot}. It was the {thing}!",
    "{at_last}{helper} found it {found_spot}.",
    "{suddenly}{helper} spotted the {cthing} {found_spot}!",
)
LOST_HAPPY = (
    "{name} was so {good} that {he} jumped up and down.",
    "{name} gave {helper} a big hug.",
    "{name} {smiled} and held the {thing} tight.",
    "{name} smiled from ear to ear.",
)
LOST_THANKS = (
    "Thank you, {helper}! You are the best!",
    "You found it! Thank you so much!",
    "Thank you! I will never lose it again.",
    "My {thing}! Thank you, {helper}!",
)
LOST_END = (
    "From that day on, {name} always kept {his} {thing} close.",
    "After that, {name} took good care of {his} {cthing}.",
    "{name} and {helper} played with the {thing} until the sun went down.",
    "{night}{name} went to sleep with the {thing} right next to {him}.",
)
LOST_LESSONS = (
    "good friends help you when you need them",
    "it is important to take care of the things you love",
    "you should never give up looking",
    "a true friend will always help you",
    "it is good to keep your things safe",
)


def _lost_and_found(c: _Story) -> list[str]:
    rng = c.rng
    out = [c.pick(LOST_HAS)]
    with_pet = rng.random() < 0.5
    if with_pet:
        out += c.meet("pet")
        out.append(c.pick(LOST_GO_PET))
    else:
        out.append(c.pick(LOST_GO))
    out += c.maybe(0.4, SCENE)
    out += c.maybe(0.7, LOST_PLAY)
    out += [BREAK, c.pick(LOST_GONE), c.pick(LOST_SAD)]
    out.append(c.hero_says(LOST_LINES))
    out.append(c.pick(LOST_SEARCH))
    if with_pet:
        c["helper"] = c["pet"]
        out.append(c.pick(LOST_PET_HELP))
    else:
        c["helper"] = c["friend"]
        c.genders.add(c["fgender"])
        out.append(c.pick(LOST_FRIEND_COME))
        out.append(c.friend_says(FRIEND_HELP_LINES))
    out += [BREAK, c.pick(LOST_FOUND), c.pick(LOST_HAPPY), c.hero_says(LOST_THANKS)]
    out += c.maybe(0.6, LOST_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 2: sharing, a quarrel and making up
# ---------------------------------------------------------------------------------------------

SHARE_START = (
    "{when}{friend} came over to play, and {name} showed off {his} new {cthing}.",
    "{when}the two friends were playing {at_place} with {name}'s {fthing}.",
    "{when}{name} brought {his} {cthing} to {place}, and {friend} was there too.",
    "{when}{name} got {a_fthing} from {parent}, and {friend} came to see it.",
)
SHARE_WANT = (
    "Can I play with your {thing}?",
    "Can I have a turn, {name}?",
    "Wow, what a nice {thing}! Can I try it?",
    "Please let me hold your {thing}!",
    "Can we play with it together?",
)
SHARE_NO_LINES = (
    "No! It is mine!",
    "No, you can't! It is my {thing}!",
    "It is mine. Find your own {thing}!",
    "No, I want to play with it by myself!",
)
SHARE_NO = (
    "But {name} did not want to share.",
    "{name} held the {thing} tight and shook {his} head.",
    "{name} hid the {thing} behind {his} back.",
)
SHARE_FIGHT = (
    "{friend} reached for the {thing}, and {name} pulled it back.",
    "{friend} grabbed the {thing}, and they both pulled hard.",
    "They began to pull and shout, and soon they were both {angry}.",
    "The two friends began to fight over the {thing}.",
)
SHARE_BAD = (
    "{friend} went home {sadly}, and {name} was left all alone.",
    "{friend} started to cry and ran home.",
    "{suddenly}the {thing} fell into the mud, and {friend} ran home in tears.",
    "{friend} walked away, and {name} did not feel like playing anymore.",
)
SHARE_ALONE = (
    "{name} tried to play by {himself}, but it was not fun.",
    "Playing with the {thing} alone was not fun at all.",
    "{name} sat down and felt {bad}.",
    "{hero} did not feel happy, even with the {thing} in {his} hands.",
    "The {thing} did not seem so special anymore.",
)
SHARE_PARENT = (
    "{parent} saw {name} and asked what was wrong.",
    "{parent} came outside and sat down next to {name}.",
)
SHARE_PARENT_LINES = (
    "Toys are more fun when you share them.",
    "A good friend shares, {name}.",
    "Maybe you can say sorry and take turns.",
    "How would you feel if {friend} did not share with you?",
)
SHARE_GO = (
    "{name} went to find {friend}.",
    "{name} picked up the {thing} and walked to {friend}'s house.",
    "{name} took a deep breath and went to {friend}.",
    "{name} thought about it, and then {he} ran after {friend}.",
)
SHARE_SORRY = (
    "I am sorry, {friend}. Let's play together.",
    "I am sorry I did not share my {thing}. You can have a turn.",
    "Do you want to play with my {thing}? I am sorry.",
    "I was wrong, {friend}. Let's share the {thing}.",
)
SHARE_OK = (
    "I am sorry too!",
    "Thank you, {name}! Let's take turns.",
    "That is okay. Friends forgive each other.",
    "Yes! Let's play!",
)
SHARE_END = (
    "They took turns with the {thing} and laughed all {daypart}.",
    "{name} and {friend} played together until it was time for {meal}.",
    "From then on, {name} and {friend} always shared their toys.",
    "Sharing the {thing} was much more fun than keeping it.",
    "Soon they were laughing again, and the {thing} was fun for both of them.",
)
SHARE_LESSONS = (
    "sharing makes everyone happy",
    "toys are more fun when you share them",
    "saying sorry can fix a fight",
    "a good friend is worth more than any toy",
    "it is better to share than to fight",
)


def _sharing(c: _Story) -> list[str]:
    out = c.meet("friend")
    out.append(c.pick(SHARE_START))
    out.append(c.friend_says(SHARE_WANT))
    out.append(c.hero_says(SHARE_NO_LINES) if c.rng.random() < 0.6 else c.pick(SHARE_NO))
    out += [c.pick(SHARE_FIGHT), c.pick(SHARE_BAD), BREAK, c.pick(SHARE_ALONE)]
    if c.rng.random() < 0.5:
        out += [c.pick(SHARE_PARENT), c.parent_says(SHARE_PARENT_LINES)]
    out += [c.pick(SHARE_GO), c.hero_says(SHARE_SORRY), c.friend_says(SHARE_OK, reply=True)]
    out += [BREAK, c.pick(SHARE_END)]
    return out


# ---------------------------------------------------------------------------------------------
# Plot 3: a fear overcome
# ---------------------------------------------------------------------------------------------

# (the fear, where it is, do it, did it)
FEARS = (
    ("the big slide", "to the playground", "go down the big slide", "went down the big slide"),
    ("the deep water", "to the lake", "jump into the water", "jumped into the water"),
    ("the tall tree", "into the garden", "climb the tall tree", "climbed the tall tree"),
    ("the old bridge", "into the woods", "walk across the old bridge",
     "walked across the old bridge"),
    ("the big waves", "to the beach", "swim in the waves", "swam in the waves"),
    ("the big dog next door", "next door", "pet the big dog", "petted the big dog"),
    ("the high swing", "to the park", "swing up high", "swung up high"),
    ("the snowy hill", "to the hill", "ride a sled down the snowy hill",
     "rode a sled down the snowy hill"),
    ("the big horse", "to the farm", "ride the big horse", "rode the big horse"),
    ("the tall ladder", "to the tree house", "climb the tall ladder", "climbed the tall ladder"),
    ("the dark cave", "to the hills", "walk into the dark cave", "walked into the dark cave"),
)  # fmt: skip
FEAR_INTRO = (
    "{name} was afraid of {fear}.",
    "There was one thing that {name} did not like: {fear}.",
    "{name} was brave about many things, but {he} was scared of {fear}.",
    "{name} was a little bit scared of {fear}.",
    "Just thinking about {fear} made {name}'s knees shake.",
)
FEAR_OTHERS = (
    "All the other children liked to {fear_do}, but {name} stayed back.",
    "{his} friends liked to {fear_do}, but {name} just watched.",
    "{name} always stood far away and watched the others.",
    "Everyone said it was fun to {fear_do}, but {name} did not want to try.",
)
FEAR_DAY = (
    "{when}{name} went {fear_at} with {buddy}.",
    "{when}{buddy} took {name} {fear_at}.",
    "{when}{name} and {buddy} went {fear_at} together.",
)
FEAR_NO = (
    "I can't do it. I am too scared.",
    "What if I fall?",
    "It is too big for me!",
    "I don't want to {fear_do}.",
    "Do I have to?",
)
FEAR_CHEER = (
    "You can do it, {name}!",
    "Don't be scared. I will be right here.",
    "Let's try it together!",
    "Just take a deep breath. You are braver than you think.",
    "Try it once, and if you do not like it, you can stop.",
    "I believe in you, {name}.",
)
FEAR_TRY = (
    "{name} took a deep breath.",
    "{name}'s legs were shaking, but {he} took one small step.",
    "{hero} held {buddy}'s hand tight.",
    "{hero} counted to three: one, two, three!",
    "{name} thought about how proud {he} would feel.",
)
FEAR_PET = ('{pet} {psound} as if to say, "You can do it!"',)
FEAR_DO = (
    "Then {he} {fear_did}!",
    "{slowly_}{name} {fear_did}.",
    "{hero} closed {his} eyes and {fear_did}.",
    "And then, before {he} knew it, {name} {fear_did}!",
)
FEAR_FUN = (
    "It was not scary at all. It was {fun}!",
    "{fear} was not scary at all. It was {fun}!",
    "{name} started to laugh. It was so much fun to {fear_do}!",
    "To {his} surprise, {he} loved it.",
    "{hero} felt like a bird flying in the sky.",
    "{name}'s heart was beating fast, but now it was a happy feeling.",
)
FEAR_YAY = (
    "I did it, {buddy}! I really did it!",
    "Can I do it again, {buddy}?",
    "That was fun! I am not scared of {fear} anymore!",
    "Look, {buddy}! I am brave!",
    "Again! Again! I want to {fear_do} again!",
)
FEAR_END = (
    "From that day on, {name} was not afraid of {fear} anymore.",
    "{name} {fear_did} again and again until it was time to go home.",
    "{name} felt very proud of {himself}.",
    "{night}{name} told everyone how brave {he} had been.",
    "{buddy} {hug}, and they both {smiled}.",
)
FEAR_LESSONS = (
    "being brave means trying even when you are scared",
    "things are often less scary than they seem",
    "it helps to have a friend by your side",
    "you can do more than you think",
    "trying new things can be fun",
)


def _fear(c: _Story) -> list[str]:
    rng = c.rng
    c["fear"], c["fear_at"], c["fear_do"], c["fear_did"] = rng.choice(FEARS)
    out = [c.pick(FEAR_INTRO)]
    out += c.maybe(0.6, FEAR_OTHERS)
    if rng.random() < 0.5:
        out += c.meet("friend")
        c["buddy"] = c["friend"]
        cheer = c.friend_says(FEAR_CHEER)
    else:
        c["buddy"] = c["parent"]
        cheer = c.parent_says(FEAR_CHEER)
    out += [c.pick(FEAR_DAY), c.hero_says(FEAR_NO), cheer, BREAK]
    if rng.random() < 0.25:
        out += c.meet("pet")
        out.append(c.pick(FEAR_PET))
    out += [c.pick(FEAR_TRY), c.pick(FEAR_DO), c.pick(FEAR_FUN), c.hero_says(FEAR_YAY)]
    out += c.maybe(0.7, FEAR_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 4: helping someone
# ---------------------------------------------------------------------------------------------

# (first mention, later mention, gender or "n" for "it", trouble, plea or "", help, thanks)
HELPEES = (
    ("an old man with a big bag", "the old man", "m",
     "{hhe} had dropped all {hhis} apples, and they were rolling down the path.",
     "Oh dear, my apples!",
     "{name} ran after the apples and put every one back in the bag.",
     "{hhe} gave {name} the biggest apple of all."),
    ("an old woman on a bench", "the old woman", "f",
     "{hhe} was looking for {hhis} glasses and could not find them.",
     "Where did I put my glasses?",
     "{name} looked around and saw the glasses sitting on top of {hhis} head!",
     "{hhe} laughed and gave {name} a sweet from {hhis} pocket."),
    ("a baby bird on the ground", "the baby bird", "n",
     "It had fallen out of its nest and could not fly yet.",
     "",
     "{name} picked it up very gently and put it back in the nest.",
     "The mother bird came back and sang a happy song."),
    ("a little kitten in a tree", "the kitten", "n",
     "It was stuck on a high branch and was too scared to come down.",
     "",
     "{name} called {parent}, and together they helped the kitten down.",
     "The kitten purred and rubbed against {name}'s legs."),
    ("a duckling all alone", "the duckling", "n",
     "It had lost its mother and was peeping very loudly.",
     "",
     "{name} walked slowly to the pond, and the duckling followed {him}.",
     "When the duckling saw its mother, it swam over as fast as it could."),
    ("a man with heavy bags", "the man", "m",
     "{hhe} was carrying too many bags, and one of them was about to fall.",
     "These bags are so heavy!",
     "{name} took the small bag and carried it all the way to {hhis} door.",
     "{hhe} thanked {name} and gave {him} a glass of cold lemonade."),
    ("a little boy who was crying", "the little boy", "m",
     "{hhe} had fallen down and hurt {hhis} knee.",
     "My knee hurts!",
     "{name} helped {hhim} up and walked with {hhim} to find {hhis} mother.",
     "{hhe} stopped crying and gave {name} a big smile."),
    ("a little girl who was crying", "the little girl", "f",
     "{hhe} had let go of {hhis} balloon, and now it was stuck in a bush.",
     "My balloon! I can't reach it!",
     "{name} reached into the bush and carefully pulled the balloon out.",
     "{hhe} held the balloon tight and said it was the best day ever."),
    ("a tiny turtle on its back", "the turtle", "n",
     "It was stuck and could not turn over.",
     "",
     "{name} gently turned the turtle over.",
     "The turtle slowly walked to the water and swam away."),
    ("a farmer in a muddy field", "the farmer", "f",
     "{hhis} sheep had run out of the gate and were all over the field.",
     "Oh no, my sheep are out!",
     "{name} ran around the field and helped bring every sheep back inside.",
     "{hhe} let {name} feed the baby lambs as a thank you."),
    ("a squirrel by an empty tree", "the squirrel", "n",
     "It had dropped all its nuts, and they were scattered in the grass.",
     "",
     "{name} picked up the nuts one by one and left them by the tree.",
     "The squirrel took the nuts and chattered a happy thank you."),
)  # fmt: skip
HELP_GO = (
    "{when}{name} was walking to {place}.",
    "{when}{name} was on {his} way home from {place}.",
    "{when}{name} was playing {at_place} with {his} {cthing}.",
    "{when}{name} went for a walk with {parent}.",
)
HELP_SEE = (
    "{suddenly}{name} saw {hintro}.",
    "On the way, {he} saw {hintro}.",
    "{name} stopped. There was {hintro}.",
    "{hero} heard a sound and turned around. It was {hintro}.",
)
HELP_THINK = (
    "{name} wanted to help.",
    "{name} knew just what to do.",
    "{name} did not walk away.",
    '{hero} thought, "I can help!"',
    "{name} remembered that {parent} always said to help others.",
)
HELP_CLOSE = (
    "{name} knelt down next to {hwho}.",
    "{name} put down {his} {thing} so that {he} could use both hands.",
    "{name} walked over {slowly}.",
    "{name} went closer to see what was wrong.",
)
HELP_OFFER = (
    "Don't worry, I will help you!",
    "Can I help you?",
    "Let me help!",
    "I can help you with that!",
)
HELP_THANKS = (
    "Thank you, {name}! You are very kind.",
    "What a kind {kid} you are!",
    "Thank you so much, little one.",
    "You are a real helper, {name}.",
)
HELP_FEEL = (
    "{name} felt warm and {good} inside.",
    "Helping made {name} feel {very}{good}.",
    "{name} smiled all the way home.",
    "{name} waved goodbye and skipped away.",
)
HELP_END = (
    "When {name} got home, {he} told {parent} all about it.",
    "{parent} was very proud of {him}.",
    "{night}{name} fell asleep with a smile on {his} face.",
    "{name} hoped {he} could help someone again tomorrow.",
)
HELP_LESSONS = (
    "helping others makes you happy too",
    "a small act of kindness can mean a lot",
    "it is good to help those who need it",
    "kindness is never wasted",
)


def _helping(c: _Story) -> list[str]:
    hintro, hwho, hgender, trouble, plea, helps, thanks = c.rng.choice(HELPEES)
    c["hintro"] = hintro
    c["hwho"] = hwho
    if hgender == "n":
        c["hhe"], c["hhim"], c["hhis"] = "it", "it", "its"
    else:
        _set_pronouns(c, "h", hgender)
        c.genders.add(hgender)
    out = [c.pick(HELP_GO), *c.maybe(0.5, SCENE), c.pick(HELP_SEE), _cap(c.fill(trouble))]
    # "he said" would be unclear when the hero is also a he
    hero_gender = "m" if c["he"] == "he" else "f"
    pronoun = c["hhe"] if hgender not in ("n", hero_gender) else None
    if plea:
        out.append(c.say(hwho, (plea,), pronoun))
    out += [c.pick(HELP_THINK), c.hero_says(HELP_OFFER), BREAK, *c.maybe(0.7, HELP_CLOSE)]
    out.append(_cap(c.fill(helps)))
    if plea:
        out.append(c.say(hwho, HELP_THANKS, pronoun))
    out += [_cap(c.fill(thanks)), c.pick(HELP_FEEL)]
    out += c.maybe(0.6, HELP_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 5: a trip somewhere
# ---------------------------------------------------------------------------------------------

# (where to, things to see there)
TRIPS = (
    ("the zoo", ("lions", "monkeys", "a tall giraffe", "an elephant", "zebras", "penguins",
                 "a sleepy bear", "a big hippo")),
    ("the sea", ("seashells", "crabs", "big waves", "seagulls", "a starfish", "a lighthouse",
                 "little fish")),
    ("a farm", ("cows", "pigs", "hens", "a big horse", "baby goats", "a red tractor", "sheep")),
    ("the mountains", ("tall trees", "a waterfall", "an eagle", "snow on the tops", "a deer",
                       "a cold stream")),
    ("the city", ("tall buildings", "busy streets", "a big museum", "a fountain", "red buses",
                  "a toy shop")),
    ("the aquarium", ("fish of every color", "a shark", "an octopus", "jellyfish",
                      "a sea turtle", "a seal")),
    ("the fair", ("a big wheel", "balloons", "a merry-go-round", "clowns", "a puppet show",
                  "a man on stilts")),
    ("a big lake", ("ducks", "little boats", "swans", "a wooden dock", "frogs", "an island")),
    ("the museum", ("old bones", "a huge dinosaur", "paintings", "a space rocket", "old coins",
                    "a knight in armor")),
)  # fmt: skip
TRAVEL = ("by car", "by train", "by bus", "on a boat", "by car", "by train")
TRIP_NEWS = (
    "Tomorrow we are going to {dest}!",
    "Pack your bag, {name}. We are going to {dest} today!",
    "Guess what? We are going on a trip to {dest}!",
    "How would you like to visit {dest}?",
)
TRIP_EXCITED = (
    "{name} was so {excited} that {he} could not sleep.",
    "{name} jumped up and down with joy.",
    "{name} had never been to {dest} before.",
    "{name} {smiled} and ran to get ready.",
)
TRIP_PACK = (
    "{hero} packed {his} {cthing}, some {snack}, and a warm sweater.",
    "{name} put {his} {thing} in {his} bag so it could come too.",
    "{hero} made sure to bring {his} {fthing}.",
    "{hero} put on {his} favorite {tcol} shirt.",
)
TRIP_TRAVEL = (
    "They went {travel}.",
    "The trip {travel} was long, but {name} looked out of the window the whole time.",
    "They traveled {travel}, and {name} sang songs with {parent} on the way.",
    "{name} and {parent} set off {travel} early in the {daypart}.",
)
TRIP_ARRIVE = (
    "When they got to {dest}, {name}'s eyes went wide.",
    "{at_last}they arrived at {dest}.",
    "Soon they were at {dest}.",
    "It did not take long to get to {dest}.",
)
TRIP_SEE = (
    "{hero} saw {sight1} and {sight2}.",
    "First, they saw {sight1}. Then they saw {sight2}.",
    "{name} saw {sight1}, {sight2}, and {sight3}!",
    "There was so much to see, like {sight1} and {sight2}.",
)
TRIP_WOW = (
    "Look at that, {parent}!",
    "Wow! I love {dest}!",
    "Can we stay here forever?",
    "This is the best day ever!",
    "Can we come back tomorrow?",
)
TRIP_EVENT = (
    "They ate {snack} under a big tree.",
    "{parent} bought {him} {a_treat}.",
    "{name} drew a picture of {sight2} to show {his} friend {friend}.",
    "{name} took a picture of {sight1} with {parent}'s camera.",
    "They sat on a bench and ate {snack}.",
)
TRIP_HOME = (
    "At the end of the day, they went home {travel}.",
    "When the sun began to set, it was time to leave {dest}.",
    "On the way home, {name} fell asleep holding {his} {thing}.",
    "Soon it was time to go home, and {name} waved goodbye to {dest}.",
)
TRIP_END = (
    "{night}{name} dreamed about {sight1}.",
    "It was the best day ever.",
    "{name} could not wait to go back to {dest} again.",
    "{name} told {friend} all about {sight3} the next day.",
)
TRIP_LESSONS = (
    "there is always something new to see",
    "the world is full of wonderful things",
    "trips are more fun with the people you love",
)


def _trip(c: _Story) -> list[str]:
    rng = c.rng
    c["dest"], sights = rng.choice(TRIPS)
    c["sight1"], c["sight2"], c["sight3"] = rng.sample(sights, 3)
    c["travel"] = rng.choice(TRAVEL)
    out = [c.parent_says(TRIP_NEWS), c.pick(TRIP_EXCITED)]
    out += c.maybe(0.6, TRIP_PACK)
    out += [c.pick(TRIP_TRAVEL), BREAK, c.pick(TRIP_ARRIVE), *c.maybe(0.4, SCENE)]
    out.append(c.pick(TRIP_SEE))
    out += [c.hero_says(TRIP_WOW), c.pick(TRIP_EVENT), BREAK, c.pick(TRIP_HOME)]
    out += c.maybe(0.7, TRIP_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 6: a wish
# ---------------------------------------------------------------------------------------------

WISH_MAGIC = (
    ("{when}{name} saw a shooting star in the night sky.",
     "{hero} closed {his} eyes and made a wish."),
    ("{when}{name} found an old well at the end of the garden.",
     "{hero} threw a coin into the well and made a wish."),
    ("{when}{name} found a smooth, shiny stone {at_place}.",
     "{hero} held the stone tight and made a wish."),
    ("{when}{name} found a big white dandelion in the grass.",
     "{hero} blew on it, and the seeds flew away as {he} made a wish."),
    ("{when}{name} saw the first star of the evening from {his} window.",
     "{hero} whispered a wish to the star."),
)  # fmt: skip
WISH_FLY = (
    "{name} always wanted to fly like a bird.",
    ("I wish I could fly!", "I wish I could fly up to the clouds!"),
    (
        "The next moment, {name} began to float up into the air!",
        "{hero} flew over the houses, over the trees, and over {place}.",
        "{hero} waved to the birds, and the birds sang to {him}.",
        "Down below, {parent} looked very small.",
    ),
    (
        "When {he} woke up in {his} bed, {he} was not sure if it had been a dream.",
        "But there was a little feather on {his} pillow, and {name} smiled.",
    ),
)
WISH_SNOW = (
    "{name} had never seen snow, and {he} wanted to see it more than anything.",
    ("I wish it would snow!", "I wish for lots and lots of snow!"),
    (
        "The next morning, everything outside {name}'s window was white.",
        "Soft snow covered the roofs, the trees, and {place}.",
        "{name} ran outside and built a big snowman with {friend}.",
        "They gave the snowman {name}'s {cthing} to hold.",
    ),
    (
        "{name} said it was the best snow day ever.",
        "{night}{name} looked at the snowman from the window and whispered thank you.",
    ),
)
WISH_FRIEND = (
    "{name} often felt lonely, because there were no children on {his} street.",
    ("I wish I had a friend to play with.", "I wish for a best friend!"),
    (
        "The next {daypart}, a new family moved into the {small} house next door.",
        "They had {a_fkid} named {friend}, who was the same age as {name}.",
        "{friend} loved to {hobby}, just like {name}.",
        "Soon {name} and {friend} were playing with the {thing} together.",
    ),
    (
        "From that day on, {name} was never lonely again.",
        "{name} and {friend} became the best of friends.",
    ),
)
WISH_BIG = (
    "{name} was tired of being little.",
    ("I wish I were big and tall!", "I wish I were as tall as a tree!"),
    (
        "The next morning, {name} was as tall as a tree!",
        "{hero} could see over the roof of {his} house.",
        "But {he} could not fit through the door, and {his} {thing} looked tiny in {his} hand.",
        "{hero} could not even sit at the table with {parent}.",
    ),
    (
        "So {name} made one more wish, and soon {he} was {his} own size again.",
        "{hero} hugged {parent} and said that being little was just right.",
    ),
)
WISH_PET = (
    "{name} wanted an animal friend more than anything.",
    ("I wish I had a pet!", "I wish I had a little friend with soft fur!"),
    (
        "The next day, {name} heard a small noise by the door.",
        "There sat {a_padj} {pkind}, looking up at {him}.",
        "{parent} said the {pkind} could stay, and {name} named {phim} {pet}.",
        "{name} and {pet} played together all {daypart}.",
    ),
    (
        "{night}{pet} slept at the end of {name}'s bed.",
        "{name} smiled, because {his} wish had come true.",
    ),
)
WISH_WHEN = ("One day, ", "One evening, ", "Then one day, ", "One summer evening, ", "")
WISHES = (WISH_FLY, WISH_SNOW, WISH_FRIEND, WISH_BIG, WISH_PET)
WISH_NAMES = ("fly", "snow", "friend", "big", "pet")  # each of WISHES in a word, for the facts
WISH_LESSONS = (
    "wishes can come true if you believe",
    "you are just right the way you are",
    "the best things often come when you least expect them",
    "it is good to be thankful for what you have",
)


def _wish(c: _Story) -> list[str]:
    rng = c.rng
    want, lines, happens, ending = wish = rng.choice(WISHES)
    c.events["wish"] = WISH_NAMES[WISHES.index(wish)]
    c.setdefault("when", rng.choice(WISH_WHEN))
    if wish is WISH_FRIEND or wish is WISH_SNOW:
        c.genders.add(c["fgender"])
    if wish is WISH_PET:
        c.genders.add(c["pgender"])
        c.met.add("pet")
    see, make = rng.choice(WISH_MAGIC)
    out = [c.pick((want,)), c.pick((see,)), c.pick((make,)), c.hero_says(lines), BREAK]
    first, second, third, fourth = happens
    out += [c.pick((first,)), c.pick((second,))]
    if rng.random() < 0.7:
        out.append(c.pick((third,)))
    out += [c.pick((fourth,)), BREAK]
    out.append(c.pick((ending[0],)))
    if rng.random() < 0.5:
        out.append(c.pick((ending[1],)))
    return out


# ---------------------------------------------------------------------------------------------
# Plot 7: a lesson learned
# ---------------------------------------------------------------------------------------------

# (setting, warning, what the hero did, what happened, what the grown-up said after, lessons)
LESSONS = (
    ("{when}{name} and {parent} went for a walk to the pond.",
     "Do not run near the pond. It is very slippery.",
     "But {name} wanted to see the frogs, so {he} ran near the pond anyway.",
     "{hero} slipped and fell into the mud with a big splash!",
     "It is okay. Now you know why we walk near the water.",
     ("it is wise to listen to the grown-ups who care for you",)),
    ("{when}{name} was playing with {his} {cthing} on the stairs.",
     "Put your toys away, or someone might trip over them.",
     "But {name} left {his} {thing} on the stairs and ran outside to play.",
     "Later, {name} tripped over {his} own {thing} and bumped {his} knee.",
     "See? A tidy house is a safe house.",
     ("a tidy room is a safe room", "it is good to put things back where they belong")),
    ("{when}{parent} baked a big plate of cookies.",
     "Don't eat too many cookies before dinner.",
     "But the cookies were so good that {name} ate one, then two, then five.",
     "Soon {his} tummy began to hurt, and {he} could not eat any dinner.",
     "Cookies are a treat, not a meal.",
     ("too much of a good thing can be bad", "it is wise to listen to good advice")),
    ("{when}{name} wanted to go outside to play, but it was a cold day.",
     "Take your coat. It is cold outside.",
     "But {name} did not want to wear {his} coat, and {he} ran out without it.",
     "Soon the wind began to blow, and {name} was shivering from head to toe.",
     "Next time, take your coat, and you will stay warm.",
     ("it is wise to listen to the grown-ups who care for you",)),
    ("{when}{name} was playing with {his} {fthing} in the living room.",
     "Please don't throw your {thing} in the house.",
     "But {name} started to throw {his} {thing} up and down anyway.",
     "{suddenly}it hit {parent}'s favorite vase, and the vase fell and broke!",
     "Thank you for telling me the truth. That was brave.",
     ("telling the truth is always the best thing to do", "it is good to own up to mistakes")),
    ("{when}{name} and {parent} went to the big shop in town.",
     "Hold my hand in the shop, and stay close to me.",
     "But {name} let go of {parent}'s hand to look at the toys.",
     "When {he} turned around, {parent} was not there, and {name} felt very scared.",
     "I am so glad you are safe. Let's always stay together.",
     ("it is important to stay close to your grown-up",)),
    ("{when}{parent} gave {name} a little plant in a pot.",
     "Don't forget to water your little plant every day.",
     "But {name} forgot, because {he} was busy playing with {his} {thing}.",
     "After a few days, the little plant was dry and drooping.",
     "Plants need care every day, just like pets and people.",
     ("living things need care every day", "it is important to keep your promises")),
    ("{when}{name} and {parent} went to the playground.",
     "Wait your turn on the slide, {name}.",
     "But {name} pushed to the front of the line.",
     "The other children were upset, and nobody wanted to play with {name}.",
     "When you wait your turn, everyone has more fun.",
     ("it is good to wait your turn", "being fair makes friends")),
)  # fmt: skip
LESSON_WARN_PREFIX = ("{parent} said to {name}, ", "{parent} told {him}, ", "{parent} said, ")
LESSON_FEEL = (
    "{name} started to cry.",
    "{name} felt {very}{bad}.",
    "{name} wished {he} had listened.",
    "{name} felt silly and {bad}.",
)
LESSON_SORRY = (
    "I am sorry, {parent}. I should have listened.",
    "I am sorry. I will listen next time.",
    "You were right, {parent}.",
    "I did not think it would happen to me.",
)
LESSON_COMFORT = (
    "{parent} {hug}.",
    "{parent} knelt down and wiped {his} tears.",
    "{parent} came over and helped {him}.",
)
LESSON_END = (
    "After that day, {name} always listened to {parent}.",
    "{name} never forgot what happened that day.",
    "From then on, {name} was much more careful.",
    "The next time, {name} remembered what {parent} had said.",
)


def _lesson(c: _Story) -> list[str]:
    rng = c.rng
    setting, warning, did, happened, after, lessons = told = rng.choice(LESSONS)
    c.events["lesson"] = str(LESSONS.index(told))
    out = [_cap(c.fill(setting))]
    if rng.random() < 0.5:
        out.append(c.pick(LESSON_WARN_PREFIX) + '"' + _cap(c.fill(warning)) + '"')
    else:
        out.append(c.parent_says((warning,)))
    out += [_cap(c.fill(did)), BREAK, _cap(c.fill(happened)), c.pick(LESSON_FEEL)]
    out += [c.pick(LESSON_COMFORT), c.hero_says(LESSON_SORRY), c.parent_says((after,), True)]
    out += c.maybe(0.6, LESSON_END)
    c.lessons = lessons
    return out


# ---------------------------------------------------------------------------------------------
# Plot 8: a race
# ---------------------------------------------------------------------------------------------

POOLS["race_how"] = ("as fast as they could", "like the wind", "with all their might",
                     "faster and faster", "as quick as rabbits")  # fmt: skip
POOLS["fun"] = ("fun", "great fun", "so much fun", "amazing", "wonderful", "the best")
GOALS = (
    "the big oak tree", "the old fence", "the end of the field", "the red gate", "the pond",
    "the top of the hill", "the big rock", "the garden wall", "the mailbox", "the old barn",
)  # fmt: skip
RACE_SET = (
    "{when}{name} and {friend} were playing {at_place}.",
    "{when}{name} and {friend} went to {place} to play.",
    "{when}the two friends were running around {place}.",
)
RACE_CHALLENGE = (
    "I bet I can run faster than you, {name}!",
    "Let's have a race to {goal}!",
    "Race you to {goal}!",
    "Who do you think is faster, {name}, you or me?",
)
RACE_YES = (
    "You are on!",
    "Okay! Let's go!",
    "Let's see who wins!",
    "I am the fastest!",
)
RACE_START = (
    "Ready, set, go! {name} and {friend} ran as fast as they could.",
    "On your marks, get set, go! The two friends ran {race_how}.",
    'They lined up, and {parent} shouted, "Go!"',
    "They both started to run toward {goal}.",
    "Off they went, running across {place}.",
)
RACE_MID = (
    "{friend} was in front at first.",
    "{name} ran so fast that the wind blew in {his} hair.",
    "{name} and {friend} were neck and neck.",
    "{name}'s feet went thump, thump, thump on the ground.",
)
RACE_FALL = (
    "{suddenly}{friend} tripped over a stone and fell.",
    "Halfway there, {friend} slipped and fell on the grass.",
)
RACE_HELP = (
    "{name} stopped and ran back to help {fhim}.",
    "{name} did not keep running. {He} went back to {friend}.",
)
RACE_OK = (
    "Are you okay, {friend}?",
    "Here, take my hand.",
    "Let's finish together!",
)
RACE_TOGETHER = (
    "They walked to {goal} together, hand in hand.",
    "Nobody won the race, but {name} and {friend} were both happy.",
    "{name} and {friend} reached {goal} together and laughed.",
)
RACE_WIN = (
    "{name} reached {goal} first!",
    "{name} touched {goal} just before {friend}.",
    "In the end, {name} got to {goal} first.",
)
RACE_GOOD = (
    "Good race, {name}!",
    "You are fast!",
    "Well done! Next time I will win!",
)
RACE_KIND = (
    "You ran very fast too, {friend}.",
    "Thank you! Let's race again tomorrow.",
    "You were great too!",
)
RACE_LOSE = (
    "{friend} got there first.",
    "{friend} was just a little faster and won the race.",
    "In the end, {friend} reached {goal} first.",
)
RACE_LOSE_FEEL = (
    "{name} was {bad} for a moment, but then {he} smiled.",
    "{name} wanted to be upset, but {he} was having too much fun.",
    "{name} was out of breath, but {he} was still smiling.",
)
RACE_LOSE_SAY = (
    "Good job, {friend}! Let's race again tomorrow.",
    "Well done! You are really fast.",
    "That was fun! Next time I will win!",
)
RACE_END = (
    "Then they sat under a tree and shared some {snack}.",
    "They raced to {goal} again and again until it was time to go home.",
    "They were both tired, but very {good}.",
    "{parent} gave them each {a_treat} for running so well.",
)
RACE_LESSONS = (
    "helping a friend is more important than winning",
    "it is good to be a kind winner",
    "having fun matters more than winning",
    "a good friend is happy for others",
)


def _race(c: _Story) -> list[str]:
    rng = c.rng
    c["goal"] = rng.choice(GOALS)
    out = c.meet("friend")
    out.append(c.pick(RACE_SET))
    out += c.maybe(0.5, SCENE)
    out += [c.friend_says(RACE_CHALLENGE), c.hero_says(RACE_YES, reply=True)]
    out += [c.pick(RACE_START), c.pick(RACE_MID), BREAK]
    roll = rng.random()
    if roll < 0.34:
        out += [c.pick(RACE_FALL), c.pick(RACE_HELP), c.hero_says(RACE_OK)]
        out.append(c.pick(RACE_TOGETHER))
        c.lessons = RACE_LESSONS[:1]
        c.events["race"] = "together"
    elif roll < 0.67:
        out += [c.pick(RACE_WIN), c.friend_says(RACE_GOOD), c.hero_says(RACE_KIND, True)]
        c.lessons = RACE_LESSONS[1:2]
        c.events["race"] = "won"
    else:
        out += [c.pick(RACE_LOSE), c.pick(RACE_LOSE_FEEL), c.hero_says(RACE_LOSE_SAY)]
        c.lessons = RACE_LESSONS[2:]
        c.events["race"] = "lost"
    out += c.maybe(0.6, RACE_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 9: making something
# ---------------------------------------------------------------------------------------------

# (what, the short name, where, what they need, what went wrong, how they fixed it)
MAKES = (
    ("a sandcastle", "the sandcastle", "at the beach", ("wet sand", "a bucket", "some shells"),
     "{suddenly}a big wave came and washed half of the sandcastle away.",
     "This time they built a wall of sand to keep the water out."),
    ("a snowman", "the snowman", "in the yard", ("lots of snow", "two stones", "a carrot"),
     "But the snowman's head kept falling off.",
     "They packed the snow tight and made the head a little smaller."),
    ("a cake for {parent}", "the cake", "in the kitchen", ("flour", "eggs", "milk", "sugar"),
     "{suddenly}the bag of flour tipped over, and white dust went everywhere.",
     "They cleaned up, laughed, and started again, more carefully this time."),
    ("a birdhouse", "the birdhouse", "in the garden shed", ("some wood", "glue", "paint"),
     "But the roof of the birdhouse would not stay on.",
     "They used a little more glue and held the roof until it was dry."),
    ("a tower of blocks", "the tower", "in the living room", ("all the blocks",),
     "When the tower was very tall, it wobbled and fell down with a crash.",
     "This time they made the bottom of the tower wide and strong."),
    ("a paper boat", "the boat", "by the stream", ("paper", "crayons"),
     "But when they put the boat in the water, it began to sink.",
     "They folded a new boat from thicker paper, and this one floated."),
    ("a card for {parent}", "the card", "at the kitchen table", ("paper", "crayons", "glitter"),
     "{suddenly}the glue spilled all over the card.",
     "They let it dry and drew flowers over the sticky part."),
    ("a fort out of blankets", "the fort", "in the living room",
     ("blankets", "pillows", "two chairs"),
     "But the blankets kept sliding off the chairs.",
     "They put heavy books on the corners, and the fort stayed up."),
    ("a kite", "the kite", "in the garden", ("paper", "two sticks", "string", "a long tail"),
     "But the first time they tried it, the kite would not fly.",
     "They gave it a longer tail and ran with it into the wind."),
    ("a bird feeder", "the bird feeder", "in the backyard", ("an old bottle", "string", "seeds"),
     "But the string broke, and the seeds spilled on the ground.",
     "They tied it again with a stronger string."),
)  # fmt: skip
MAKE_IDEA = (
    "{when}{name} had a great idea.",
    "{when}{name} and {mate} wanted to make {make}.",
    "{when}{name} said that {he} wanted to make {make}.",
    "{when}{name} was bored, so {he} thought of something to make.",
)
MAKE_LINES = (
    "Let's make {make}!",
    "I know! We can make {make}!",
    "{mate}, can we make {make} {make_at}?",
    "I want to make {make} today!",
)
MAKE_OK = ("What a good idea!", "Yes, let's do it!", "That sounds like fun!", "Okay, let's try!")
MAKE_GATHER = (
    "They got {materials}.",
    "First, they needed {materials}.",
    "{name} ran to get {materials}.",
    "{mate} helped {name} find {materials}.",
)
MAKE_WORK = (
    "They worked {hard}.",
    "{name} and {mate} worked together, one step at a time.",
    "{name} hummed a happy song as {he} worked.",
    "Bit by bit, {make_the} began to take shape.",
    "{name} was careful and took {his} time.",
)
MAKE_SAD = (
    "{name} felt like giving up.",
    "{name} wanted to cry.",
    "{name} stamped {his} foot.",
    "For a moment, {name} did not know what to do.",
)
MAKE_CHEER = (
    "Let's try again!",
    "Don't give up, {name}!",
    "We can fix it!",
    "Everyone makes mistakes. Let's try once more.",
)
MAKE_DONE = (
    "{at_last}{make_the} was finished.",
    "When they were done, it was the best {make_noun} they had ever seen.",
    "Soon {make_the} was ready, and it looked wonderful.",
)
MAKE_SHOW = (
    "{name} put {his} {cthing} right next to it.",
    "{name} showed it to everyone {he} knew.",
    "{name} stood back and looked at {make_the} with a big smile.",
)
MAKE_END = (
    "{name} and {mate} were very proud of {make_the}.",
    "{name} could not stop smiling.",
    "Making {make_the} was hard work, but it was worth it.",
    "{night}{name} told {parent} that it was the best day ever.",
)
MAKE_LESSONS = (
    "if at first you do not succeed, you should try again",
    "working together makes hard jobs easy",
    "mistakes are a part of learning",
    "making something with a friend is the best kind of fun",
)


def _making(c: _Story) -> list[str]:
    rng = c.rng
    make, short, where, materials, problem, fix = rng.choice(MAKES)
    c["make"] = c.fill(make)
    c["make_the"] = short
    c["make_noun"] = short[4:]
    c["make_at"] = where
    c["materials"] = _join_list(list(materials))
    out: list[str] = []
    if rng.random() < 0.5 or "{parent}" in make:
        out += c.meet("friend")
        c["mate"] = c["friend"]
        ok = c.friend_says(MAKE_OK, reply=True)
    else:
        c["mate"] = c["parent"]
        ok = c.parent_says(MAKE_OK, reply=True)
    out += [c.pick(MAKE_IDEA), c.hero_says(MAKE_LINES), ok, c.pick(MAKE_GATHER)]
    out += [c.pick(MAKE_WORK), BREAK, _cap(c.fill(problem)), c.pick(MAKE_SAD)]
    out.append(c.say(c["mate"], MAKE_CHEER))
    out += [_cap(c.fill(fix)), BREAK, c.pick(MAKE_DONE), c.pick(MAKE_SHOW)]
    out += c.maybe(0.6, MAKE_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 10: weather and a day out
# ---------------------------------------------------------------------------------------------

# (how the day looks, what the hero says, the grown-up's advice, things to do, twist, ending)
WEATHERS = (
    (("{when}{name} woke up and looked out of the window. Everything was white with snow!",
      "It had snowed all night, and the whole {town} was white."),
     ("Snow! Can I go outside?", "Look, {parent}! It snowed!"),
     ("Put on your warm coat and your mittens first.", "Wear your hat, it is very cold."),
     ("They built a snowman with a carrot nose.", "They made snow angels on the ground.",
      "They had a snowball fight, and {name} laughed so hard {he} fell over.",
      "They slid down the hill on a sled.", "They caught snowflakes on their tongues."),
     ("Soon {name}'s fingers and toes were very cold.",),
     ("{parent} made hot cocoa, and {name} drank it by the fire.",
      "Inside, {name} warmed up under a soft blanket.")),
    (("{when}it was raining, and big drops ran down the window.",
      "{when}the sky was gray, and rain was falling on the roof."),
     ("Can I go out and play in the rain?", "I love the rain!"),
     ("Put on your rain boots and your raincoat.", "Don't forget your umbrella."),
     ("They jumped in every puddle they could find.", "They watched the worms come out.",
      "They sailed little leaves like boats down the stream by the road.",
      "They listened to the rain go pitter-patter on the umbrella.",
      "They splashed and stomped until they were wet from head to toe."),
     ("{suddenly}the rain stopped, and a big rainbow came out.",),
     ("They stood and looked at the rainbow for a long time.",
      "{name} said it was the best rainy day ever.")),
    (("{when}it was very windy, and the trees were swaying.",
      "{when}a strong wind was blowing, and the leaves were dancing in the air."),
     ("The wind is so strong!", "Can we go out in the wind?"),
     ("Hold on to your hat!", "Button up your coat, it is windy."),
     ("They chased the leaves across {place}.", "They watched the clouds race across the sky.",
      "They held out their arms and pretended to fly.",
      "They flew a kite high above the trees."),
     ("{suddenly}a big gust of wind blew {name}'s hat right off {his} head!",),
     ("They ran after the hat and caught it just in time.",
      "At home, {name} laughed about the naughty wind.")),
    (("{when}the sun was shining, and the sky was clear and blue.",
      "{when}it was hot and sunny, and the birds were singing."),
     ("It is a perfect day for a picnic!", "Can we go to {place}?"),
     ("Bring your sun hat and some water.", "Let's pack a picnic basket."),
     ("They had a picnic with {snack} on a big blanket.", "They made daisy chains in the grass.",
      "They played with {name}'s {cthing} in the sun.",
      "They lay on the grass and looked at the clouds.",
      "They splashed their feet in the cool water."),
     ("{suddenly}some ants found the picnic and marched away with a crumb.",
      "{suddenly}a little cloud came and it began to rain, just for a minute."),
     ("They laughed and packed up their things.", "They walked home as the sun went down.")),
    (("{when}it was a cool autumn day, and the leaves were red and gold.",
      "{when}the leaves on the trees had turned orange and yellow."),
     ("Look at all the leaves!", "Can we go and play in the leaves?"),
     ("Wear your warm sweater. It is a little chilly.", "Let's go for a walk."),
     ("They raked the leaves into a big pile and jumped in it.",
      "They looked for the biggest leaf in {place}.",
      "They picked up acorns and pine cones.", "They threw the leaves high into the air."),
     ("{suddenly}a squirrel jumped out of the leaf pile!",),
     ("They laughed all the way home.", "At home, they made a picture with the leaves.")),
)  # fmt: skip
WEATHER_WHEN = ("One day, ", "One morning, ", "One Saturday, ", "One Sunday, ", "")
WEATHER_NAMES = ("snow", "rain", "wind", "sun", "autumn")  # each of WEATHERS in a word
DAY_OUT = (
    "{name} and {mate} went outside together.",
    "{name} ran outside with {mate}.",
    "Soon {name} and {mate} were outside.",
)
DAY_FEEL = (
    "{name} {smiled}.",
    "{name} did not mind one bit.",
    "It only made the {daypart} more fun.",
    "{name} and {mate} looked at each other and laughed.",
)
DAY_END = (
    "It had been a wonderful day.",
    "{night}{name} fell asleep thinking about the fun day.",
    "{name} hoped tomorrow would be just as fun.",
)
DAY_LESSONS = (
    "every kind of weather can be fun",
    "a good day is a day spent with friends",
    "there is fun to be found on any day",
)


def _weather(c: _Story) -> list[str]:
    rng = c.rng
    looks, wow, advice, fun, twist, ending = day = rng.choice(WEATHERS)
    c.events["weather"] = WEATHER_NAMES[WEATHERS.index(day)]
    c.setdefault("when", rng.choice(WEATHER_WHEN))
    if rng.random() < 0.5:
        out = c.meet("friend")
        c["mate"] = c["friend"]
    elif rng.random() < 0.5:
        out = c.meet("pet")
        c["mate"] = c["pet"]
    else:
        out = []
        c["mate"] = c["parent"]
    out += [c.pick(looks), c.hero_says(wow), c.parent_says(advice, True), c.pick(DAY_OUT)]
    they = f"{c['name']} and {c['pet']} " if c["mate"] == c["pet"] else "They "
    for line in rng.sample(fun, 2 if rng.random() < 0.6 else 3):
        out.append(_cap(c.fill(line.replace("They ", they, 1))))
    out += [BREAK, c.pick(twist), c.pick(DAY_FEEL), c.pick(ending)]
    out += c.maybe(0.5, DAY_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 11: a new friend
# ---------------------------------------------------------------------------------------------

NEW_SHY = (
    "{name} was new in town and did not know anyone yet.",
    "{name} was very shy, and it was hard for {him} to make friends.",
    "{name} had just moved to a new house, and {he} felt a little lonely.",
)
NEW_SEE = (
    "{when}{name} went to {place} and saw {a_fkid} playing with {a_padj} {pkind}.",
    "{when}{parent} took {name} to {place}, and there was {a_fkid} with {a_pkind}.",
    "{when}{name} saw {a_fkid} and {a_padj} {pkind} {at_place}.",
)
NEW_WORRY = (
    "{name} wanted to say hello, but {he} was too shy.",
    "{name} stood still and looked at {his} shoes.",
    "What if the {fkid} did not want to play with {him}?",
)
NEW_PUSH = (
    "Go on, {name}, just say hello.",
    "Why don't you ask if you can play too?",
    "Everyone needs a friend, {name}. Go and say hi!",
    "You could show the {fkid} your {thing}.",
)
# (what the hero says, what the new friend may answer)
NEW_TALK = (
    (("Hello! My name is {name}. Can I play with you?", "Hi! I am {name}. Can I play too?"),
     ("Hi, {name}! I am {friend}. Yes, let's play!",
      "Yes! My name is {friend}. I was hoping someone would come!",
      "Of course! I am {friend}, and this is {pet}.")),
    (("Hi! I like your {pkind}. What is {phis} name?", "Hello! What is your {pkind} called?"),
     ("{Phis} name is {pet}. I am {friend}. You can pet {phim} if you like.",
      "This is {pet}, and I am {friend}. {Phe} loves new friends!",
      "{pet}! And my name is {friend}. What is yours?")),
    (("Hi! Do you want to play with my {thing}?", "Hi there! I have {a_cthing}. Want to play?"),
     ("Yes, please! I am {friend}. What a nice {thing}!",
      "I love to play! My name is {friend}, and this is {pet}.",
      "Wow, {a_cthing}! I am {friend}. Let's play!")),
)  # fmt: skip
NEW_PLAY = (
    "{name} and {friend} played with the {thing} all {daypart}.",
    "They played tag and ran around {place}.",
    "{friend} and {name} found out that they both loved to {hobby}.",
    "They took turns with {name}'s {thing} and laughed and laughed.",
    "{pet} {pmove} after them wherever they went.",
)
NEW_END = (
    "When it was time to go home, {friend} asked if {name} could come back tomorrow.",
    "{name} was not lonely anymore.",
    "From that day on, {name} and {friend} were the best of friends.",
    "{name} ran to {parent} and said that {he} had made a new friend.",
)
NEW_LESSONS = (
    "saying hello is the first step to making a friend",
    "being brave can help you find new friends",
    "a friend can be waiting just around the corner",
)


def _new_friend(c: _Story) -> list[str]:
    rng = c.rng
    c.genders.add(c["fgender"])
    c.genders.add(c["pgender"])
    out = [c.pick(NEW_SHY), c.pick(NEW_SEE), c.pick(NEW_WORRY), c.parent_says(NEW_PUSH)]
    out += [c.pick(("{slowly_}{name} walked over.", "{name} took a deep breath.")), BREAK]
    out += c.maybe(0.3, SCENE)
    hello, answers = rng.choice(NEW_TALK)
    out += [c.hero_says(hello), c.friend_says(answers, reply=True)]
    out += [c.pick(line) for line in rng.sample((NEW_PLAY[:3], NEW_PLAY[3:]), 2)]
    out += c.maybe(0.7, NEW_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 12: a birthday surprise
# ---------------------------------------------------------------------------------------------

BDAY_KNOW = (
    "{when}{name} remembered that tomorrow was {bday}'s birthday.",
    "{when}{name} found out that it was {bday}'s birthday soon.",
    "Tomorrow was {bday}'s birthday, and {name} wanted to do something special.",
    "{when}{helper} whispered to {name} that it was {bday}'s birthday the next day.",
)
BDAY_PLAN = (
    "Let's make a surprise for {bday}!",
    "I want to give {bday} the best birthday ever!",
    "Let's do something special for {bday}!",
    "Can you help me plan a surprise, {helper}?",
)
BDAY_YES = (
    "What a lovely idea!",
    "Yes! But we have to keep it a secret.",
    "I will help you. Shh, don't tell!",
    "Let's start right away!",
)
BDAY_WORK = (
    "{name} drew a big picture of {bday} with {his} crayons.",
    "They blew up {flower} balloons and hung them over the door.",
    "They baked a cake and put {candles} candles on top.",
    "{name} wrapped {his} {cthing} in {flower} paper as a present.",
    "They made a paper crown with {deco} on it.",
    "They hung a long string of {flower} paper flags across the room.",
    '{name} wrote a card that said, "Happy birthday, {bday}!"',
)
BDAY_HIDE = (
    "When {bday} came in, everyone was hiding behind the sofa.",
    "{name} hid behind the door and waited very quietly.",
    "{name} and {helper} turned off the lights and waited.",
    "{name} could hardly keep still while {he} waited.",
)
BDAY_SHOUT = (
    "Surprise!",
    "Surprise! Happy birthday, {bday}!",
    "Happy birthday! Surprise!",
)
BDAY_WOW = (
    "Oh, what a lovely surprise!",
    "Is this all for me?",
    "This is the best birthday ever!",
    "Thank you, {name}! I had no idea!",
)
BDAY_GIFT = (
    "{name} gave {bday} the present, and {bday} opened it {quick_open}.",
    "Then {name} held out a present with a big {flower} bow.",
)
BDAY_INSIDE = (
    "Inside was {name}'s own {cthing}.",
    "It was {name}'s {fthing}, the one {he} loved so much.",
)
BDAY_ASK = (
    "But this is your favorite {thing}!",
    "You are giving me your {thing}?",
)
BDAY_ANSWER = (
    "I want you to have it.",
    "You are special, so I want you to have something special.",
    "I know you will take good care of it.",
)
BDAY_END = (
    "They ate {cake} cake and sang songs until bedtime.",
    "{bday} said it was the happiest birthday ever.",
    "Everyone laughed and danced, and {name} felt warm inside.",
    "{night}{name} fell asleep with frosting on {his} nose.",
)
BDAY_LESSONS = (
    "giving can feel even better than getting",
    "the best presents come from the heart",
    "a surprise made with love is the best surprise of all",
)
POOLS["candles"] = ("three", "five", "seven", "nine", "lots of", "bright", "little", "pink")
POOLS["quick_open"] = ("right away", "very carefully", "slowly", "with a big smile")


def _birthday(c: _Story) -> list[str]:
    rng = c.rng
    if rng.random() < 0.5:
        c["bday"], c["helper"] = c["parent"], c["friend"]
        out = c.meet("friend")
        helper_says = c.friend_says
        bday_says = c.parent_says
    else:
        c["bday"], c["helper"] = c["friend"], c["parent"]
        out = c.meet("friend")
        helper_says = c.parent_says
        bday_says = c.friend_says
    out += [c.pick(BDAY_KNOW), c.hero_says(BDAY_PLAN), helper_says(BDAY_YES, True), BREAK]
    work = rng.sample(BDAY_WORK[:3] + BDAY_WORK[4:], 2)
    out += [c.pick((line,)) for line in work]
    gift = rng.random() < 0.6
    if gift:
        out.append(c.pick(BDAY_WORK[3:4]))
    out += [c.pick(BDAY_HIDE), c.hero_says(BDAY_SHOUT), bday_says(BDAY_WOW)]
    if gift:
        out += [BREAK, c.pick(BDAY_GIFT), c.pick(BDAY_INSIDE), bday_says(BDAY_ASK)]
        out.append(c.hero_says(BDAY_ANSWER, True))
    out += c.maybe(0.7, BDAY_END)
    return out


# ---------------------------------------------------------------------------------------------
# Plot 13: growing a plant
# ---------------------------------------------------------------------------------------------

# (seed, the plant, how it looks when grown, what they do with it)
SEEDS = (
    ("a sunflower seed", "sunflower", "a sunflower taller than {name}, with a big yellow face",
     "The birds came to eat the seeds from the sunflower."),
    ("a pumpkin seed", "pumpkin vine", "a big round orange pumpkin",
     "{name} and {parent} carved a funny face into the pumpkin."),
    ("a bean", "bean plant", "a bean plant that climbed all the way up the fence",
     "{name} picked the beans, and they ate them for dinner."),
    ("a tomato seed", "tomato plant", "a plant full of little red tomatoes",
     "{name} and {parent} made a salad with the tomatoes."),
    ("a strawberry seed", "strawberry plant", "a plant with sweet red strawberries",
     "{name} shared the strawberries with {friend}."),
    ("a carrot seed", "carrot top", "a fat orange carrot hiding under the soil",
     "{name} pulled the carrot out and gave it to the rabbits next door."),
    ("a tiny apple seed", "little tree", "a little apple tree with shiny green leaves",
     "{name} said that one day it would be full of apples."),
    ("a flower seed", "flower", "a beautiful {flower} flower",
     "{name} picked the flower and gave it to {parent}."),
)  # fmt: skip
GROW_GET = (
    "{when}{parent} gave {name} {seed}.",
    "{when}{name} found {seed} in {his} pocket.",
    "{when}{name} got {seed} from an old lady at the market.",
)
GROW_PLANT = (
    "{name} dug a small hole {grow_spot} and put the seed inside.",
    "{hero} planted the seed {grow_spot} and covered it with soil.",
    "{name} and {parent} planted it {grow_spot}.",
)
GROW_WATER = (
    "{hero} patted the soil and gave it {water}.",
    "{hero} watered it with {his} little {tcol} watering can.",
    "Then {name} sprinkled some water on top.",
)
GROW_ASK = (
    "When will it grow?",
    "Is it going to grow today?",
    "Why is nothing happening?",
    "How long do I have to wait?",
)
GROW_WAIT = (
    "Good things take time. You have to be patient.",
    "Just keep watering it every day, and you will see.",
    "Seeds grow slowly, {name}. Give it some time.",
)
GROW_DAYS = (
    "Every day, {name} watered the seed and checked on it.",
    "One day passed, then two, then three, and nothing happened to the {plant}.",
    "{name} waited and waited, but the soil was still bare.",
    "Each morning, {name} ran outside to look, but there was nothing there.",
)
GROW_PET = (
    "One day, {pet} tried to dig it up!",
    "Once, {pet} sat right on top of the spot, and {name} had to move {phim}.",
)
GROW_SPROUT = (
    "Then one morning, {name} saw a tiny green sprout!",
    "{at_last}a little green shoot poked out of the soil.",
    "Then, one {weather} morning, there was a small green leaf!",
)
GROW_YAY = (
    "It is growing! {parent}, come and look!",
    "Look! My seed is growing!",
    "Hello, little plant!",
)
GROW_BIG = (
    "Day by day, the {plant} grew {bigger}.",
    "{name} kept watering it, and it grew and grew.",
    "{weeks}, and the sun and rain helped the {plant} grow.",
)
GROW_END = (
    "{name} was so proud of {his} plant.",
    "{name} told everyone that {he} had grown it all by {himself}.",
    "Every time {name} looked at it, {he} smiled.",
)
GROW_LESSONS = (
    "good things take time",
    "being patient is worth it",
    "with a little care, small things can grow big",
)
POOLS["grow_spot"] = ("in the garden", "in a pot by the window", "next to the fence",
                      "in a sunny corner of the yard", "by the kitchen door")  # fmt: skip


def _growing(c: _Story) -> list[str]:
    rng = c.rng
    c["seed"], c["plant"], grown, after = rng.choice(SEEDS)
    out = [c.pick(GROW_GET), c.pick(GROW_PLANT), c.pick(GROW_WATER), c.hero_says(GROW_ASK)]
    out += [c.parent_says(GROW_WAIT, True), BREAK, c.pick(GROW_DAYS)]
    if rng.random() < 0.3:
        out += c.meet("pet")
        out.append(c.pick(GROW_PET))
    out += [c.pick(GROW_SPROUT), c.hero_says(GROW_YAY), c.pick(GROW_BIG), BREAK]
    out.append(_cap(c.fill("{weeks_end}, there was " + grown + ".")))
    out.append(_cap(c.fill(after)))
    out += c.maybe(0.6, GROW_END)
    return out


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------

PLOTS: tuple[tuple[Callable[[_Story], list[str]], tuple[str, ...]], ...] = (
    (_lost_and_found, LOST_LESSONS),
    (_sharing, SHARE_LESSONS),
    (_fear, FEAR_LESSONS),
    (_helping, HELP_LESSONS),
    (_trip, TRIP_LESSONS),
    (_wish, WISH_LESSONS),
    (_lesson, ()),
    (_race, RACE_LESSONS),
    (_making, MAKE_LESSONS),
    (_weather, DAY_LESSONS),
    (_new_friend, NEW_LESSONS),
    (_birthday, BDAY_LESSONS),
    (_growing, GROW_LESSONS),
)


def _write(c: _Story) -> tuple[str, str]:
    """Draw the cast, a plot and its sentences into c; returns the text and the plot's name."""
    rng = c.rng
    _cast(c)
    out = _opening(c)
    plot, lessons = rng.choice(PLOTS)
    out += plot(c)
    out += _closing(c, c.lessons or lessons)
    paragraphs: list[list[str]] = [[]]
    breaks = 0
    for sentence in out:
        if not sentence:
            if paragraphs[-1] and breaks < 2 and rng.random() < 0.3:
                paragraphs.append([])
                breaks += 1
        else:
            paragraphs[-1].append(sentence)
    text = "\n".join(" ".join(p) for p in paragraphs if p)
    return text, plot.__name__.lstrip("_")


def _compose(rng: random.Random) -> tuple[str, frozenset[str]]:
    """One story, and the genders ("m"/"f") of the characters it may refer to by pronoun."""
    c = _Story(rng)
    text, _ = _write(c)
    return text, frozenset(c.genders)


@dataclass(frozen=True)
class Told:
    """One story and the facts it was made from, as the generator drew them.

    values holds every fixed value of the story (the cast: name, gender pronouns, friend, pet,
    pkind, thing, place, parent...; the plot's: helper, goal, fear, dest, make, bday...), drawn
    whether or not the text uses them; used names the keys whose values a template put into the
    text (so "pet" in used means the text names the pet); drawn lists every pool value drawn
    for the text, in order; events what the plot decided (race: won/lost/together, wish,
    weather, lesson: an index into LESSONS)."""

    text: str
    plot: str  # the plot's name: lost_and_found, sharing, fear, helping, trip, wish, ...
    values: dict[str, str]
    used: frozenset[str]
    drawn: tuple[tuple[str, str], ...]
    events: dict[str, str]
    genders: frozenset[str]

    @property
    def gender(self) -> str:
        """The hero's: "f" or "m"."""
        return "f" if self.values["he"] == "she" else "m"


def tell(rng: random.Random) -> Told:
    """One story with its facts; the same rng state gives the same text as _compose."""
    c = _RecordedStory(rng)
    text, plot = _write(c)
    return Told(
        text=text,
        plot=plot,
        values=dict(c),
        used=frozenset(c.used),
        drawn=tuple(c.drawn),
        events=dict(c.events),
        genders=frozenset(c.genders),
    )


def iter_stories(seed: int) -> Iterator[str]:
    """Endless stream of stories (plain text, no EOT, no trailing newline).

    Deterministic from seed: the same seed always yields the same stories.
    """
    rng = random.Random(seed)
    while True:
        yield _compose(rng)[0]


def iter_told(seed: int | str) -> Iterator[Told]:
    """The stories of iter_stories(seed) with their facts (an int seed gives the same texts)."""
    rng = random.Random(seed)
    while True:
        yield tell(rng)


def generate(n_bytes: int, seed: int) -> str:
    """Stories joined as story + "\\n" + EOT + "\\n" until the text is at least n_bytes long.

    Every story, including the last, is followed by "\\n<|endoftext|>\\n". Sizes are UTF-8 bytes
    (the text is plain ASCII, so they are also characters).
    """
    parts: list[str] = []
    total = 0
    sep = "\n" + EOT + "\n"
    stories = iter_stories(seed)
    while total < n_bytes:
        piece = next(stories) + sep
        parts.append(piece)
        total += len(piece.encode("utf-8"))
    return "".join(parts)


def write(path: str | os.PathLike[str], n_bytes: int, seed: int) -> int:
    """Write generate()'s text to path atomically (temp file in the same dir, then os.replace).

    Returns the number of bytes written.
    """
    data = generate(n_bytes, seed).encode("utf-8")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)
    return len(data)
