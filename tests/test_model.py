import pytest
import torch

from gptcli.model import GPT, param_groups
from gptcli.recipe import ModelConfig

VARIANTS = [
    {},
    {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
    {"positions": "rope", "mlp": "relu2", "qk_norm": True, "zero_init_proj": True},
    {"tie_embeddings": False, "dropout": 0.1},
]


def make(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **kw)
    return GPT(cfg)


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_shapes_and_loss(kw):
    model = make(**kw)
    idx = torch.randint(0, 50, (3, 16))
    logits, loss = model(idx, torch.randint(0, 50, (3, 16)))
    assert logits.shape == (3, 16, 50)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)


@pytest.mark.parametrize("kw", VARIANTS[:3])
def test_causal_future_tokens_do_not_matter(kw):
    model = make(**kw).eval()
    a = torch.randint(0, 50, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 50
    la, _ = model(a)
    lb, _ = model(b)
    assert torch.allclose(la[0, :10], lb[0, :10], atol=1e-5)
    assert not torch.allclose(la[0, 10:], lb[0, 10:])


@pytest.mark.parametrize("kw", VARIANTS[:3])
def test_kv_cache_matches_full_forward(kw):
    model = make(**kw).eval()
    idx = torch.randint(0, 50, (2, 12))
    full, _ = model(idx)
    cache = model.new_cache(2)
    first, _ = model(idx[:, :5], cache=cache)
    steps = [first]
    for t in range(5, 9):  # one token at a time
        logits, _ = model(idx[:, t : t + 1], cache=cache, pos=t)
        steps.append(logits)
    chunk, _ = model(idx[:, 9:], cache=cache, pos=9)  # a chunk after a prefix
    steps.append(chunk)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_tied_embeddings_share_storage_and_count_once():
    tied, untied = make(), make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.num_params() - tied.num_params() == 50 * 32


def test_residual_projections_are_scaled():
    model = make()
    assert model.blocks[0].attn.proj.weight.std().item() < 0.02 / 1.5
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_weight_decay_only_on_matrices():
    decay, no_decay = param_groups(make().parameters(), 0.1)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        make()(torch.zeros(1, 17, dtype=torch.long))


def test_a_few_steps_learn_a_repeating_sequence():
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seq = torch.arange(17).remainder(5).unsqueeze(0)
    for _ in range(60):
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_zero_init_projections_make_blocks_start_as_identity():
    model = make(zero_init_proj=True)
    assert model.blocks[0].attn.proj.weight.abs().sum() == 0
    assert model.blocks[1].mlp.down.weight.abs().sum() == 0
    x = torch.randn(1, 4, 32)
    assert torch.equal(model.blocks[0](x), x)
