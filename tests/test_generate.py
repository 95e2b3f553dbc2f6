import torch

from gptcli.generate import SamplingParams, filter_logits, generate
from gptcli.model import GPT
from gptcli.recipe import ModelConfig


def make(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(
        ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40, **kw)
    ).eval()


def test_greedy_equals_argmax_of_full_forward():
    model = make()
    prompt = [1, 2, 3]
    out = list(generate(model, prompt, SamplingParams(max_new_tokens=8, temperature=0)))
    seq = list(prompt)
    for _ in range(8):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    assert out == seq[3:]


def test_generation_past_the_context_slides_the_window():
    model = make(positions="rope")
    out = list(generate(model, [1, 2], SamplingParams(max_new_tokens=40, temperature=0)))
    assert len(out) == 40


def test_same_seed_same_tokens_other_seed_differs():
    model = make()
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=0)
    a = list(generate(model, [5], params, seed=7))
    b = list(generate(model, [5], params, seed=7))
    c = list(generate(model, [5], params, seed=8))
    assert a == b and a != c


def test_eos_stops_generation():
    model = make()
    greedy = SamplingParams(max_new_tokens=5, temperature=0)
    first = next(generate(model, [1], greedy))
    assert list(generate(model, [1], greedy, eos_id=first)) == []


def test_top_k_and_top_p_keep_only_their_set():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.23, 0.09, ...
    assert probs[0] < 0.7 < probs[0] + probs[1]
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.7)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.5)).isfinite()
    assert kept.tolist() == [[True, False, False, False, False]]


def test_sampled_tokens_stay_inside_top_k():
    model = make()
    logits, _ = model(torch.tensor([[3]]))
    allowed = set(torch.topk(logits[0, -1], 3).indices.tolist())
    params = SamplingParams(max_new_tokens=1, temperature=2.0, top_k=3)
    seen = {next(generate(model, [3], params, seed=s)) for s in range(40)}
    assert seen <= allowed and len(seen) > 1
