"""Every fast path in gptcli.kernels gives its plain reference's values (and gradients)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import COMPILE_DEVICES

from gptcli import kernels
from gptcli.kernels import (
    CausalAttentionFunction,
    Linear,
    LinearCrossEntropy,
    RMSNormFunction,
    can_prepack,
    causal_attention,
    causal_attention_reference,
    cross_entropy_reference,
    linear_cross_entropy,
    rms_norm,
    rms_norm_reference,
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def counting(monkeypatch, owner, name: str) -> list:
    """Count the calls to owner.name, which still does its work."""
    calls, original = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a: calls.append(1) or original(*a))
    return calls


def norm_inputs(dtype, device="cpu"):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 24, dtype=dtype, device=device, requires_grad=True)
    weight = torch.empty(24, device=device).uniform_(0.5, 1.5).requires_grad_()
    grad = torch.randn(3, 5, 24, dtype=dtype, device=device)
    return x, weight, grad


def values_and_grads(fn, x, weight, grad):
    out = fn(x, weight, 1e-5)
    gx, gw = torch.autograd.grad(out, (x, weight), grad)
    return out, gx, gw


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_training_path_matches_the_reference(dtype, monkeypatch):
    """With gradients on, the hand-written backward gives the reference's values and gradients."""
    calls = counting(monkeypatch, RMSNormFunction, "apply")
    x, weight, grad = norm_inputs(dtype)
    ours = values_and_grads(rms_norm, x, weight, grad)
    ref = values_and_grads(rms_norm_reference, x, weight, grad)
    assert calls == [1]
    tol = TOL[dtype]
    assert ours[0].dtype == ours[1].dtype == dtype and ours[2].dtype == torch.float32
    for ours_t, ref_t, scale in zip(ours, ref, (1, 4, 10), strict=True):
        torch.testing.assert_close(ours_t.float(), ref_t.float(), atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_inference_path_matches_the_reference(dtype, monkeypatch):
    """Without gradients (evaluation, sampling) torch's fused kernel gives the same values."""
    calls = counting(monkeypatch, RMSNormFunction, "apply")
    x, weight, _ = norm_inputs(dtype)
    ref = rms_norm_reference(x, weight, 1e-5).detach()
    with torch.no_grad():
        ours = rms_norm(x, weight, 1e-5)
    with torch.inference_mode():
        ours_inference = rms_norm(x.detach(), weight.detach(), 1e-5)
    assert calls == []
    for out in (ours, ours_inference):
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("device", COMPILE_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_rms_norm_matches_the_reference(device, dtype):
    """Under torch.compile: the reference's values and gradients (a compiled hand-written
    backward once gave zero gradients on CUDA)."""
    x, weight, grad = norm_inputs(dtype, device)
    ours = values_and_grads(torch.compile(rms_norm, fullgraph=True), x, weight, grad)
    ref = values_and_grads(rms_norm_reference, x, weight, grad)
    tol = TOL[dtype]
    assert ours[2].abs().sum() > 0
    for ours_t, ref_t, scale in zip(ours, ref, (1, 4, 10), strict=True):
        torch.testing.assert_close(ours_t.float(), ref_t.float(), atol=tol * scale, rtol=tol)


def loss_inputs(frozen_head: bool = False):
    torch.manual_seed(0)
    x = torch.randn(300, 32, requires_grad=True)
    head = Linear(32, 50, bias=False)
    head.weight.requires_grad_(not frozen_head)
    targets = torch.randint(0, 50, (300,))
    targets[::7] = -1  # no loss there
    return x, head, targets


def loss_and_grads(fn, *inputs):
    """The loss fn() and, for each of inputs that needs one, the gradient of 3 x loss."""
    loss = fn()
    wanted = [t for t in inputs if t.requires_grad]
    return loss.detach(), *torch.autograd.grad(3 * loss, wanted)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
@pytest.mark.parametrize("chunked", [True, False])
def test_training_loss_paths_match_the_reference(chunked, amp, monkeypatch):
    """With gradients on, the chunked loss (here with a ragged last chunk) and the plain one
    give the reference's loss and gradients, also under bf16 autocast."""
    monkeypatch.setattr(kernels, "CHUNKED_LOSS_MIN", 0 if chunked else 1 << 40)
    monkeypatch.setattr(kernels, "LOSS_CHUNK_ROWS", 64)
    calls = counting(monkeypatch, LinearCrossEntropy, "apply")
    x, head, targets = loss_inputs()
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        ours = loss_and_grads(lambda: linear_cross_entropy(x, head, targets), x, head.weight)
        ref = loss_and_grads(
            lambda: cross_entropy_reference(x, head.weight, targets), x, head.weight
        )
    assert len(calls) == int(chunked)
    tol = 1e-5 if amp is None else 2e-2
    assert ours[0].item() == pytest.approx(ref[0].item(), rel=1e-5 if amp is None else 1e-3)
    for ours_g, ref_g in zip(ours[1:], ref[1:], strict=True):
        assert torch.allclose(ours_g, ref_g, atol=tol * ref_g.abs().max())


def test_chunked_loss_with_a_frozen_head_gives_the_inputs_gradient(monkeypatch):
    """A frozen head (LoRA training the blocks only) gets no gradient, its input the right one."""
    monkeypatch.setattr(kernels, "CHUNKED_LOSS_MIN", 0)
    monkeypatch.setattr(kernels, "LOSS_CHUNK_ROWS", 64)
    x, head, targets = loss_inputs(frozen_head=True)
    _, gx = loss_and_grads(lambda: linear_cross_entropy(x, head, targets), x, head.weight)
    _, ref = loss_and_grads(lambda: cross_entropy_reference(x, head.weight, targets), x)
    assert head.weight.grad is None
    assert torch.allclose(gx, ref, atol=1e-5 * ref.abs().max())


def test_evaluation_loss_takes_the_plain_path(monkeypatch):
    monkeypatch.setattr(kernels, "CHUNKED_LOSS_MIN", 0)
    calls = counting(monkeypatch, LinearCrossEntropy, "apply")
    x, head, targets = loss_inputs()
    with torch.no_grad():
        ours = linear_cross_entropy(x, head, targets)
        ref = cross_entropy_reference(x, head.weight, targets)
    assert calls == []
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.skipif(
    not can_prepack(torch.zeros(1, dtype=torch.bfloat16)), reason="needs torch with oneDNN"
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_linear_matches_f_linear(dtype, bias, monkeypatch):
    """Prepacked, inference runs oneDNN (except one fp32 row) and gives F.linear's values;
    with gradients on, the plain path runs."""
    monkeypatch.setattr(kernels, "FP32_PREPACK_MIN", 0)  # the test's matrix is small
    calls = counting(monkeypatch, torch.ops.mkldnn, "_linear_pointwise")
    torch.manual_seed(0)
    layer = Linear(48, 40, bias=bias).to(dtype)
    layer.prepack()
    assert layer.packed is not None
    one, several = torch.randn(1, 1, 48, dtype=dtype), torch.randn(2, 5, 48, dtype=dtype)
    with torch.inference_mode():
        outs = [layer(one), layer(several)]
    assert len(calls) == (2 if dtype == torch.bfloat16 else 1)
    outs.append(layer(several))  # gradients on: F.linear itself
    assert len(calls) == (2 if dtype == torch.bfloat16 else 1)
    tol = TOL[dtype]
    for x, out in zip((one, several, several), outs, strict=True):
        ref = F.linear(x, layer.weight, layer.bias).detach()
        assert out.dtype == dtype
        torch.testing.assert_close(out.detach(), ref, atol=tol, rtol=tol)


def attention_inputs(dtype):
    """q, k, v (2, 3, 17, 16) as the model makes them: strided views of one projection."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 17, 3 * 48, dtype=dtype, requires_grad=True)
    q, k, v = (t.view(2, 17, 3, 16).transpose(1, 2) for t in qkv.split(48, dim=2))
    return qkv, q, k, v, torch.randn(2, 3, 17, 16, dtype=dtype)


def test_bf16_training_attention_matches_the_reference():
    """bf16 training on a CPU takes the fp32-backward kernel: the reference's bf16 output
    exactly, and gradients as close to fp32 attention's as the reference's own."""
    qkv, q, k, v, grad = attention_inputs(torch.bfloat16)
    out = causal_attention(q, k, v)
    assert out.grad_fn.name() == "CausalAttentionFunctionBackward"
    (ours,) = torch.autograd.grad(out, qkv, grad)
    ref_out = causal_attention_reference(q, k, v)
    (ref,) = torch.autograd.grad(ref_out, qkv, grad)
    exact_out = causal_attention_reference(*(t.float() for t in (q, k, v)))
    (exact,) = torch.autograd.grad(exact_out, qkv, grad.float())
    assert torch.equal(out, ref_out)
    assert ours.dtype == torch.bfloat16
    ours_err = (ours.float() - exact).abs().max()
    assert ours_err <= (ref.float() - exact).abs().max() + 1e-6
    assert ours_err <= 2e-2 * exact.abs().max()


@pytest.mark.parametrize(
    "dtype, grad, dropout",
    [(torch.float32, True, 0.0), (torch.bfloat16, False, 0.0), (torch.bfloat16, True, 0.1)],
)
def test_other_attention_calls_take_the_reference(dtype, grad, dropout, monkeypatch):
    """fp32, inference and attention dropout run torch's own kernel choice."""
    calls = counting(monkeypatch, CausalAttentionFunction, "apply")
    _, q, k, v, _ = attention_inputs(dtype)
    with torch.set_grad_enabled(grad):
        torch.manual_seed(1)
        ours = causal_attention(q, k, v, dropout)
        torch.manual_seed(1)
        ref = causal_attention_reference(q, k, v, dropout)
    assert calls == []
    assert torch.equal(ours, ref)
