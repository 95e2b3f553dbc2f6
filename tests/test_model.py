import pytest
import torch
from torch import nn

from gptcli import kernels
from gptcli import model as model_module
from gptcli.kernels import LinearCrossEntropy
from gptcli.model import GPT, apply_rope, rope_tables
from gptcli.optim import param_groups
from gptcli.recipe import ModelConfig

VARIANTS = [
    {},
    {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
    {"positions": "rope", "mlp": "relu2", "qk_norm": True, "zero_init_proj": True},
    {"tie_embeddings": False, "dropout": 0.1},
    {"mlp": "gelu_erf"},
]


def make(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **kw)
    return GPT(cfg)


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_shapes_and_loss(kw):
    model = make(**kw)
    idx = torch.randint(0, 50, (3, 16))
    logits, _ = model(idx)
    assert logits.shape == (3, 16, 50)
    no_logits, loss = model(idx, torch.randint(0, 50, (3, 16)))  # with targets: the loss alone
    assert no_logits is None
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


@pytest.mark.parametrize("kw", VARIANTS[:3])
def test_picked_cache_rows_in_any_order_match_the_full_forward(kw):
    """Rows 2 and 0 of a three-row cache as one batch (prompts that join together), a chunk
    and then a chunk after it; the row between them keeps what it held."""
    model = make(**kw).eval()
    idx = torch.randint(0, 50, (2, 10))
    full, _ = model(idx)
    cache = model.new_cache(3)
    cache.k[:, 1].fill_(7.0)
    view = cache.pick([2, 0])
    first, _ = model(idx[:, :6], cache=view)
    second, _ = model(idx[:, 6:], cache=view, pos=6)
    assert torch.allclose(torch.cat([first, second], dim=1), full, atol=1e-5)
    reference = model.new_cache(2)
    model(idx, cache=reference)  # rows 0 and 1, side by side
    for picked, row in ((2, 0), (0, 1)):
        torch.testing.assert_close(cache.k[:, picked, :, :10], reference.k[:, row, :, :10])
        torch.testing.assert_close(cache.v[:, picked, :, :10], reference.v[:, row, :, :10])
    assert bool((cache.k[:, 1] == 7.0).all())


def test_tied_embeddings_share_storage_and_count_once():
    tied, untied = make(), make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.num_params() - tied.num_params() == 50 * 32


def test_flops_per_token_count_the_unembedding_whether_tied_or_not():
    # MFU's numerator: 6 per weight a token meets (PaLM), and the head's matmul runs either way;
    # only the embedding lookups (wte, wpe) cost nothing
    tied, untied = make(), make(tie_embeddings=False)
    attention = 12 * 2 * 32 * 16
    assert tied.flops_per_token() == 6 * (tied.num_params() - 16 * 32) + attention
    assert untied.flops_per_token() == tied.flops_per_token()


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


@pytest.mark.parametrize(
    "mlp, form, other", [("gelu", "tanh", "none"), ("gelu_erf", "none", "tanh")]
)
def test_each_gelu_computes_its_own_form(mlp, form, other):
    layer = make(mlp=mlp).blocks[0].mlp
    x = torch.randn(2, 5, 32) * 3  # wide enough that the tanh and exact (erf) forms differ
    with torch.no_grad():
        up, y = layer.up(x), layer(x)
        assert torch.allclose(y, layer.down(nn.functional.gelu(up, approximate=form)), atol=1e-6)
        assert not torch.allclose(
            y, layer.down(nn.functional.gelu(up, approximate=other)), atol=1e-6
        )


def test_model_takes_the_chunked_loss_path_when_logits_are_many(monkeypatch):
    idx, targets = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    targets[0, :4] = -1
    calls = []
    apply = LinearCrossEntropy.apply
    monkeypatch.setattr(LinearCrossEntropy, "apply", lambda *a: calls.append(1) or apply(*a))
    results = []
    for threshold in (0, 1 << 40):  # 0: every training loss goes through the chunks
        monkeypatch.setattr(kernels, "CHUNKED_LOSS_MIN", threshold)
        model = make()
        _, loss = model(idx, targets)
        loss.backward()
        results.append((len(calls), loss.item(), model.wte.weight.grad))
    assert [r[0] for r in results] == [1, 1]  # chunked once, then the plain path
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)
    assert torch.allclose(results[0][2], results[1][2], atol=1e-6)
    monkeypatch.setattr(kernels, "CHUNKED_LOSS_MIN", 0)
    with torch.no_grad():  # evaluation needs no gradients: the plain path
        make()(idx, targets)
    assert len(calls) == 1


def test_rope_rotates_each_channel_pair_by_its_position_angle():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=6, vocab_size=10)
    cos, sin = rope_tables(cfg, 6)
    x = torch.randn(1, 2, 6, 8)
    out = apply_rope(x, cos, sin)
    # pair (i, i + 4) of position t turns by t * theta^(-2i/8), as a complex number would
    pairs = torch.complex(x[..., :4], x[..., 4:])
    angle = torch.arange(6.0)[:, None] * 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    turned = pairs * torch.polar(torch.ones_like(angle), angle)
    assert torch.allclose(out, torch.cat((turned.real, turned.imag), dim=-1), atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"positions": "rope", "mlp": "swiglu", "bias": False}])
def test_chunked_initialisation_draws_the_same_numbers_as_torchs(kw, monkeypatch):
    """Drawn in parts of 48 elements (so that a signal can stop a large build between them),
    the weights are bit for bit those of torch's own nn.Linear and nn.Embedding init and
    normal_ over whole tensors, odd sizes and remainders under 16 elements included."""
    cfg = ModelConfig(n_layer=2, n_head=3, n_embd=24, block_size=21, vocab_size=101, **kw)

    def build() -> dict[str, torch.Tensor]:
        torch.manual_seed(7)
        return GPT(cfg).state_dict()

    monkeypatch.setattr(kernels, "FILL_CHUNK", 48)
    chunked = build()
    monkeypatch.setattr(model_module.Embedding, "reset_parameters", nn.Embedding.reset_parameters)
    monkeypatch.setattr(kernels.Linear, "reset_parameters", nn.Linear.reset_parameters)
    monkeypatch.setattr(model_module, "fill_in_chunks", torch.no_grad()(lambda t, fill: fill(t)))
    plain = build()
    assert chunked.keys() == plain.keys()
    for name, tensor in plain.items():
        assert torch.equal(chunked[name], tensor), name


def test_fill_in_chunks_keeps_the_numbers_of_one_call(monkeypatch):
    monkeypatch.setattr(kernels, "FILL_CHUNK", 32)
    for n in (5, 32, 33, 47, 48, 49, 100, 1000):
        for fill in (lambda t: t.normal_(0.0, 0.02), lambda t: t.uniform_(-0.1, 0.1)):
            torch.manual_seed(0)
            whole = fill(torch.empty(n))
            torch.manual_seed(0)
            parts = torch.empty(n)
            kernels.fill_in_chunks(parts, fill)
            assert torch.equal(parts, whole), n
