"""The sampling controls on known logits."""

import torch

from gptcli.recipe import SampleConfig
from gptcli.sampling import filter_logits, next_tokens


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
    assert next_tokens(logits, params, [gen], seen) == [2]  # 2/2 = 1.0 < 1.5
    assert next_tokens(logits, SampleConfig(temperature=0), [gen], seen) == [0]


def test_rows_sampled_together_get_the_tokens_they_get_alone():
    """Each row draws from its own generator: the rows beside it change nothing."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    params = SampleConfig(temperature=0.9, top_k=10, top_p=0.9)

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(6)]

    together = [next_tokens(logits, params, gens()) for _ in range(2)]
    alone = [next_tokens(logits[i : i + 1], params, [g]) for i, g in enumerate(gens())]
    assert together[0] == together[1] == [t for (t,) in alone]
    assert len(set(together[0])) > 1


def test_a_seeded_row_draws_what_torch_multinomial_draws():
    """Seeded samples stay what they were when each row called torch.multinomial."""
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(1))
    probs = logits.softmax(-1)  # what temperature 1 without filters samples from
    params = SampleConfig(temperature=1.0, top_k=0)
    gens = [torch.Generator().manual_seed(7 + i) for i in range(5)]
    drawn = next_tokens(logits, params, gens)
    for i in range(5):
        gen = torch.Generator().manual_seed(7 + i)
        assert drawn[i] == torch.multinomial(probs[i : i + 1], 1, generator=gen).item()
