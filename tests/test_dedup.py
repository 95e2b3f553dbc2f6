"""The duplicate indexes: sorted key runs that spill to disk past their budget, LSH bands
chosen for the threshold, signatures whose agreement estimates the Jaccard similarity."""

import random

import numpy as np

from gptcli.data import dedup


def test_key_index_finds_every_stored_value_also_spilled(tmp_path):
    rng = np.random.default_rng(0)
    index = dedup.KeyIndex(tmp_path / "runs", budget=2_000)  # a few hundred keys in RAM
    stored: dict[int, list[int]] = {}
    for batch in range(12):
        keys = rng.integers(0, 500, size=40).astype(np.uint64)
        values = np.arange(batch * 40, batch * 40 + 40)
        index.add(keys, values)
        for k, v in zip(keys.tolist(), values.tolist(), strict=True):
            stored.setdefault(k, []).append(v)
    assert any(isinstance(k, np.memmap) for k, _ in index.runs)
    assert len(index) == 480
    queries = np.arange(0, 600, dtype=np.uint64)
    where, found = index.lookup(queries)
    got: dict[int, list[int]] = {}
    for q, v in zip(where.tolist(), found.tolist(), strict=True):
        got.setdefault(int(queries[q]), []).append(v)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in stored.items()}


def test_bands_catch_a_pair_at_the_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = dedup.bands_for(threshold)
        assert bands * rows <= dedup.NUM_PERM
        assert 1 - (1 - threshold**rows) ** bands >= 0.95
        assert 1 - (1 - threshold ** (rows + 1)) ** (dedup.NUM_PERM // (rows + 1)) < 0.95
    assert dedup.bands_for(0.8) == (18, 7)


def test_signature_agreement_estimates_word_5gram_jaccard(tmp_path):
    words = [f"w{i}" for i in range(400)]
    near = dedup.NearIndex(0.8, tmp_path, 0, 1 << 20)
    pairs = []
    for changed in (0, 10, 40, 100):
        other = list(words)
        for i in random.Random(changed).sample(range(400), changed):
            other[i] = f"x{i}"
        a = {tuple(words[i : i + 5]) for i in range(396)}
        b = {tuple(other[i : i + 5]) for i in range(396)}
        sigs, _ = near.signatures([" ".join(words), " ".join(other)])
        pairs.append((len(a & b) / len(a | b), float(np.mean(sigs[0] == sigs[1]))))
    for true, estimate in pairs:
        assert abs(true - estimate) < 0.15, pairs
    assert pairs[0] == (1.0, 1.0)


def test_near_index_keeps_the_first_and_names_it(tmp_path):
    near = dedup.NearIndex(0.8, tmp_path, 0, 1 << 20)
    story = " ".join(f"word{i}" for i in range(200))
    assert near.check([0, 1], [story, "something else entirely here"]) == [None, None]
    assert near.check([2, 3], [story.replace("word5 ", "other "), ""]) == [0, None]
    assert near.file.rows == 2  # the copy and the empty document are not indexed
