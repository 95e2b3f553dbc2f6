"""The sampling controls on known logits."""

import torch

from gptcli.recipe import SampleConfig
from gptcli.sampling import filter_logits, next_token


def test_top_k_and_top_p_keep_only_their_set():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = filter_logits(logits, SampleConfig(temperature=1.0, top_k=2)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.23, 0.09, ...
    assert probs[0] < 0.7 < probs[0] + probs[1]
    kept = filter_logits(logits, SampleConfig(temperature=1.0, top_k=0, top_p=0.7)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    kept = filter_logits(logits, SampleConfig(temperature=1.0, top_k=0, top_p=0.5)).isfinite()
    assert kept.tolist() == [[True, False, False, False, False]]


def test_min_p_keeps_tokens_above_the_floor():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    probs = logits.softmax(-1)[0]
    assert probs[1] > 0.3 * probs[0] > probs[2]  # 0.37 > 0.3 > 0.14
    kept = filter_logits(logits, SampleConfig(temperature=1.0, top_k=0, min_p=0.3)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([[2.0, -1.0, 1.5, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    params = SampleConfig(temperature=0, repetition_penalty=2.0)
    gen = torch.Generator()
    assert next_token(logits, params, gen, seen).item() == 2  # 2/2 = 1.0 < 1.5
    assert next_token(logits, SampleConfig(temperature=0), gen, seen).item() == 0
