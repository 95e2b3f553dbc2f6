"""Fast paths for the model's hot layers, each beside the plain definition it must agree with.

The model (`gptcli.model`) calls these where it needs an RMSNorm, causal attention, a linear
layer or the loss; which kernel runs depends on whether gradients are needed, the dtype and
whether torch.compile is tracing. tests/test_kernels.py checks every path against the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) * weight over the last dimension, in fp32, returned in x's
    dtype: the definition every RMSNorm path below computes."""
    return F.rms_norm(x.float(), (x.size(-1),), weight.float(), eps).to(x.dtype)


class RMSNormFunction(torch.autograd.Function):
    """rms_norm_reference with a hand-written backward, for eager training.

    On CPU, autograd through torch's composite runs more kernels, and is slower, than this
    backward (benchmarks/bench_train.py).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        mean_square = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_() / x.size(-1)
        inv_rms = mean_square.add_(eps).rsqrt_()
        normed = xf * inv_rms
        ctx.save_for_backward(normed, inv_rms, weight)
        ctx.x_dtype = x.dtype
        return (normed * weight).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        normed, inv_rms, weight = ctx.saved_tensors
        grad_out = grad_out.float()
        grad_weight = (grad_out * normed).reshape(-1, normed.size(-1)).sum(0)
        grad_normed = grad_out * weight
        # d/dx of x * inv_rms(x): project out the component along normed, then rescale
        along = torch.linalg.vecdot(grad_normed, normed).unsqueeze(-1) / -normed.size(-1)
        grad_x = torch.addcmul(grad_normed, normed, along).mul_(inv_rms)
        return grad_x.to(ctx.x_dtype), grad_weight.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """rms_norm_reference through the fastest kernel for the way it is called."""
    if torch.compiler.is_compiling():
        # inductor fuses the reference itself, and compiling the hand-written backward gave
        # wrong gradients on CUDA (benchmarks/cuda_check.py)
        return rms_norm_reference(x, weight, eps)
    if torch.is_grad_enabled():
        return RMSNormFunction.apply(x, weight, eps)
    # inference: the fused kernel, with the weight in x's dtype (else a slow path)
    return F.rms_norm(x, (x.size(-1),), weight.to(x.dtype), eps)


def causal_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(head_dim)) v of (B, heads, T, head_dim) inputs: the
    definition causal_attention computes."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class CausalAttentionFunction(torch.autograd.Function):
    """torch's CPU flash attention in the inputs' dtype, with its backward in fp32.

    On a CPU, the bf16 flash backward runs slower than the fp32 one on upcast copies, by
    several times at short sequences and narrow heads (benchmarks/README.md, profile_train.py),
    while the bf16 forward is the faster one; gradients come back in the inputs' dtype.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, True
        )
        ctx.save_for_backward(q, k, v, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, logsumexp = ctx.saved_tensors
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out.float(), q.float(), k.float(), v.float(), out.float(), logsumexp, 0.0, True
        )
        return tuple(g.to(q.dtype) for g in grads)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """causal_attention_reference through the fastest kernel for the way it is called."""
    if (
        q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and dropout_p == 0.0
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
    ):
        return CausalAttentionFunction.apply(q, k, v)
    return causal_attention_reference(q, k, v, dropout_p)


# fp32 matrices smaller than this run a few rows faster through F.linear than through oneDNN;
# bf16 ones gain at every size (benchmarks/bench_sample.py)
FP32_PREPACK_MIN = 1_000_000


def can_prepack(weight: torch.Tensor) -> bool:
    """bf16 weights, or large fp32 ones, on a CPU whose torch has oneDNN (see Linear).

    oneDNN's bf16 layout needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT: on an AVX2-only CPU it
    raises, so bf16 weights stay on F.linear there."""
    if not (
        weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    ):
        return False
    if weight.dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return weight.dtype == torch.float32 and weight.numel() >= FP32_PREPACK_MIN


def _version(t: torch.Tensor) -> int:
    return -1 if t.is_inference() else t._version  # inference tensors keep no version counter


# a random initialisation fills at most this many elements per call (a multiple of 16: the
# CPU's normal_ turns its uniform draws into normal ones 16 at a time), so a signal that comes
# while a large model is built is handled within a fraction of a second
FILL_CHUNK = 1 << 22


@torch.no_grad()
def fill_in_chunks(tensor: torch.Tensor, fill: Callable[[torch.Tensor], object]) -> None:
    """fill(tensor), an in-place random initialisation (normal_, uniform_), as calls on
    consecutive parts that draw the same numbers from the same generator: parts of a multiple
    of 16 elements, the last at least 16. Python runs between the calls, so SIGINT or SIGTERM
    stops the build there. A meta tensor has nothing to fill (and torch's meta fills are slow);
    on a GPU the generator's offsets would differ, so it fills whole."""
    if tensor.is_meta:
        return
    n = tensor.numel()
    if n <= FILL_CHUNK or tensor.device.type != "cpu" or not tensor.is_contiguous():
        fill(tensor)
        return
    flat = tensor.view(-1)
    starts = list(range(0, n, FILL_CHUNK))
    if n - starts[-1] < 16:
        starts.pop()
    for start, end in zip(starts, [*starts[1:], n], strict=True):
        fill(flat[start:end])


class Linear(nn.Linear):
    """nn.Linear that can run inference on a copy of its weight prepacked for oneDNN.

    On CPU, torch's F.linear reads a bf16 weight, or an fp32 one at a few rows, slower than
    oneDNN's blocked layout does (benchmarks/bench_sample.py); a single fp32 row stays on
    F.linear, which is as fast there. prepack() makes the copy (F.linear's results up to
    summation order, about the weight's memory again) and forward uses it while the weight is
    unchanged and no gradient is needed. The state dict is untouched: the copy is no buffer.
    """

    packed: tuple[int, int, torch.Tensor] | None = None  # (weight data_ptr, _version, copy)

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation (a kaiming-uniform weight and a bias within
        1/sqrt(fan_in)), the same numbers drawn in parts (fill_in_chunks)."""
        fan_in = self.weight.size(1)
        if fan_in == 0 or self.weight.numel() == 0:
            return
        gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
        std = gain / math.sqrt(fan_in)  # as nn.init.kaiming_uniform_ computes it
        bound = math.sqrt(3.0) * std
        fill_in_chunks(self.weight, lambda part: part.uniform_(-bound, bound))
        if self.bias is not None:
            bias_bound = 1 / math.sqrt(fan_in)
            fill_in_chunks(self.bias, lambda part: part.uniform_(-bias_bound, bias_bound))

    def prepack(self) -> None:
        w = self.weight
        if not can_prepack(w):
            self.packed = None
        elif self._packed_weight() is None:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
            self.packed = (w.data_ptr(), _version(w), packed)

    def _packed_weight(self) -> torch.Tensor | None:
        w, packed = self.weight, self.packed
        if packed is None or packed[0] != w.data_ptr() or packed[1] != _version(w):
            return None  # the weight was replaced, moved or changed in place since prepack
        return packed[2] if packed[2].dtype == w.dtype else None

    def __getstate__(self) -> dict:
        # copies and pickles leave the packed weight behind (oneDNN tensors have no storage)
        return {k: v for k, v in super().__getstate__().items() if k != "packed"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and not torch.is_grad_enabled():
            packed = self._packed_weight()
            rows = x.numel() // x.size(-1) if x.size(-1) else 0
            if (
                packed is not None
                and x.dtype == packed.dtype
                and (rows > 1 or x.dtype == torch.bfloat16)
            ):
                return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
        return super().forward(x)


def cross_entropy_reference(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the logits x @ weight.T, softmax in fp32, against targets (-1:
    no loss): the definition both loss paths below compute."""
    return F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=-1)


# Below this many logits per step the plain path is as fast; above it, chunks of this many rows
# keep each chunk's logits small (benchmarks/bench_train.py)
CHUNKED_LOSS_MIN = 1 << 22
LOSS_CHUNK_ROWS = 1024


class LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy_reference over row chunks, with the gradients made on the way.

    The (tokens x vocab) logits, their softmax and their gradient are never whole in memory,
    which on a CPU cost more in page faults and memory traffic than the arithmetic
    (benchmarks/bench_train.py). Matmuls run in the autocast dtype when autocast is on.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_rows: int):  # x (N, C), weight (V, C), targets (N,)
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(dtype)
            valid = targets != -1
            count = valid.sum().clamp(min=1)
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            need_x, need_w = ctx.needs_input_grad[:2]  # a frozen head (LoRA) needs no grad_w
            grad_x = torch.empty_like(x) if need_x else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            for start in range(0, x.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                xc, tc, vc = x[rows].to(dtype), targets[rows].clamp(min=0), valid[rows]
                logits = (xc @ w.t()).float()
                picked = logits.gather(1, tc[:, None]).squeeze(1)
                # softmax in place of the logits, by hand: logsumexp and then exp make an extra
                # out-of-place pass over the logits
                row_max = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(row_max).exp_()
                total = probs.sum(dim=-1, keepdim=True)
                lse = (total.log() + row_max).squeeze(1)
                loss += ((lse - picked) * vc).sum()
                weight_of_row = (vc / count)[:, None]  # d(mean loss)/d(logits); 0 if ignored
                probs.mul_(weight_of_row / total)
                probs.scatter_add_(1, tc[:, None], -weight_of_row)
                g = probs.to(dtype)
                if need_x:
                    grad_x[rows] = g @ w
                if need_w:
                    grad_w += (g.t() @ xc).float()
        ctx.save_for_backward(grad_x, None if grad_w is None else grad_w.to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        scaled = [None if g is None else g * grad_loss for g in (grad_x, grad_w)]
        return scaled[0], scaled[1], None, None


def linear_cross_entropy(x: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """cross_entropy_reference of head's logits for x (N, C) against targets (N,): in chunks
    when training with many logits, else through head itself (which may be prepacked)."""
    if torch.is_grad_enabled() and x.size(0) * head.out_features >= CHUNKED_LOSS_MIN:
        return LinearCrossEntropy.apply(x, head.weight, targets, LOSS_CHUNK_ROWS)
    return F.cross_entropy(head(x).float(), targets, ignore_index=-1)
