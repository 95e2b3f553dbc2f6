"""The quality filters' measures on small texts: letters, repeated lines, repeated n-grams."""

import pytest

from gptcli.data import quality
from gptcli.recipe import FiltersConfig


def test_alpha_fraction_counts_letters_among_visible_characters():
    assert quality.alpha_fraction("ab cd") == 1.0
    assert quality.alpha_fraction("ab 12") == 0.5
    assert quality.alpha_fraction("  \n") == 0.0
    assert quality.alpha_fraction("été!") == 0.75


def test_repeated_line_fraction_ignores_blank_lines():
    assert quality.repeated_line_fraction("a\nb\n\na\n  a  \n") == 0.5
    assert quality.repeated_line_fraction("") == 0.0


@pytest.mark.parametrize(
    "text, drops",
    [
        ("the cat sat on the mat and looked at the dog", False),  # 'the' repeats, no 2-gram
        ("click here click here click here for more", True),  # top 2-gram: 30 of 40 chars
        ("one two three four five " * 2 + "six seven eight nine ten eleven twelve", True),
        ("a b c d e f g h i j k l m n o p q r s t u v w x y z", False),
        ("word", False),
    ],
)
def test_repeated_ngrams_follow_the_gopher_thresholds(text, drops):
    assert quality.repeated_ngrams(text.split(), len(text)) is drops


def test_rules_take_defaults_for_true_and_keep_order():
    cfg = FiltersConfig(min_words=True, drop_regex="spam", max_repeated_lines=0.5)
    assert [key for key, _ in quality.rules(cfg)] == [
        "min_words",
        "max_repeated_lines",
        "drop_regex",
    ]
    assert quality.failed(quality.rules(cfg), "spam " * 60) == "drop_regex"
    assert quality.failed(quality.rules(cfg), "too short") == "min_words"
    assert quality.failed(quality.rules(FiltersConfig()), "") is None
