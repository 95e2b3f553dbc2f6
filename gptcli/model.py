"""The decoder: a GPT-style transformer, readable top to bottom.

Token (+ learned position) embeddings, n_layer blocks of causal self-attention and an MLP with
pre-normalisation and residual connections, a final norm and the unembedding. Switches select
GPT-2's choices or modern ones (rotary positions, RMSNorm, SwiGLU, no bias). Attention goes
through torch's scaled_dot_product_attention so the fused kernels (flash on CUDA) are used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcli.recipe import ModelConfig


def mlp_hidden_size(cfg: ModelConfig) -> int:
    if cfg.mlp_hidden:
        return cfg.mlp_hidden
    if cfg.mlp == "swiglu":  # 2/3 of 4x keeps the parameter count of a 4x two-matrix MLP
        return 64 * math.ceil(8 * cfg.n_embd / 3 / 64)
    return 4 * cfg.n_embd


class RMSNormFunction(torch.autograd.Function):
    """x / rms(x) * weight, computed in fp32, with a hand-written backward.

    torch's rms_norm on CPU differentiates its composite (pow, mean, rsqrt, mul: about ten
    kernels backward); this takes three forward and six backward: 1.4x faster fwd+bwd here,
    about 5 % of a Shakespeare-recipe training step.
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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # inductor fuses the composite itself; RMSNormFunction compiled for CUDA (torch 2.11,
            # H200) gave zero gradients in bf16 and a failed kernel launch in fp32
            return F.rms_norm(x.float(), (x.size(-1),), self.weight, self.eps).to(x.dtype)
        if torch.is_grad_enabled():
            return RMSNormFunction.apply(x, self.weight, self.eps)
        # inference: the fused kernel, with the weight in x's dtype (else a slow path)
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


# fp32 matrices smaller than this run a few rows faster through F.linear than through oneDNN
# (measured: 0.4-1.0x below 0.6M weights, 1.7-2.2x from 1.5M up); bf16 gains at every size
FP32_PREPACK_MIN = 1_000_000


def can_prepack(weight: torch.Tensor) -> bool:
    """bf16 weights, or large fp32 ones, on a CPU whose torch has oneDNN (see Linear)."""
    return (
        weight.device.type == "cpu"
        and (
            weight.dtype == torch.bfloat16
            or (weight.dtype == torch.float32 and weight.numel() >= FP32_PREPACK_MIN)
        )
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def _version(t: torch.Tensor) -> int:
    return -1 if t.is_inference() else t._version  # inference tensors keep no version counter


class Linear(nn.Linear):
    """nn.Linear that can run inference on a copy of its weight prepacked for oneDNN.

    On CPU, torch's F.linear reads a bf16 weight ~1.7x slower than oneDNN's blocked layout
    when there is one row (decoding at batch 1: matrix-vector work), and runs fp32 at a few
    rows (decoding at batch 8, a short prefill) ~2x slower than oneDNN; a single fp32 row is
    as fast as F.linear already, so it stays there. prepack() makes the copy (same results up
    to summation order, ~the weight's memory again) and forward uses it while the weight is
    unchanged and no gradient is needed. The state dict is untouched: the copy is no buffer.
    """

    packed: tuple[int, int, torch.Tensor] | None = None  # (weight data_ptr, _version, copy)

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


def rope_tables(cfg: ModelConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim) of each position's angles, both halves alike."""
    head_dim = cfg.n_embd // cfg.n_head
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(length).float(), inv_freq)  # (T, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of each head, as Llama does, in x's dtype
    (as HF's Llama does): four kernels forward, where upcasting and splitting took nine."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-x2, x1), dim=-1)
    return torch.addcmul(x * cos.to(x.dtype), rotated_half, sin.to(x.dtype))


# Below this many logits per step the plain path is as fast (measured at a 65-token vocabulary);
# above it, chunks of this many rows keep each chunk's logits small (4 MB at a 1k vocabulary)
CHUNKED_LOSS_MIN = 1 << 22
LOSS_CHUNK_ROWS = 1024


class LinearCrossEntropy(torch.autograd.Function):
    """Unembedding and cross-entropy over row chunks, with the gradients made on the way.

    The (tokens x vocab) logits, their softmax and their gradient are never whole in memory:
    at 4,096 tokens and a 4,096-token vocabulary that is three 64 MB arrays a step, which on a
    CPU cost more in page faults and memory traffic than the arithmetic. Targets of -1 carry
    no loss. Matmuls run in the autocast dtype when autocast is on, softmax in fp32.
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
                # softmax in place of the logits, by hand: torch.logsumexp and then exp took
                # 3x as long on this CPU (an extra out-of-place pass and a slow reduction)
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


class KVCache:
    """Preallocated keys and values for every layer, so decoding one token costs O(T), not O(T²)."""

    def __init__(self, cfg: ModelConfig, batch: int, length: int, device, dtype) -> None:
        head_dim = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = length


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.layer = layer
        self.qkv = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.residual_scale = True  # GPT-2: shrink residual projections at init
        self.dropout = cfg.dropout
        if cfg.qk_norm:  # normalised queries and keys keep attention logits bounded
            head_dim = cfg.n_embd // cfg.n_head
            self.q_norm = RMSNorm(head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm

    def forward(self, x, rope, cache: KVCache | None, pos: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            cache.k[self.layer, :B, :, pos : pos + T] = k
            cache.v[self.layer, :B, :, pos : pos + T] = v
            k = cache.k[self.layer, :B, :, : pos + T]
            v = cache.v[self.layer, :B, :, : pos + T]
            if T == 1:  # one new token sees everything before it: no mask needed
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # a chunk after a prefix: query i sees keys up to pos + i
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(pos)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = mlp_hidden_size(cfg)
        self.kind = cfg.mlp
        self.up = Linear(cfg.n_embd, hidden, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.gate = Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.down = Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.down.residual_scale = True
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":  # squared ReLU (Primer, modded-nanoGPT)
            h = F.relu(self.up(x)).square()
        else:
            h = F.gelu(self.up(x), approximate="tanh")
        return F.dropout(self.down(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache, pos)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.positions == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            cos, sin = rope_tables(cfg, cfg.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        # finetune task: classify reads the final state of the last (extract) token
        self.cls_head = nn.Linear(cfg.n_embd, cfg.n_classes) if cfg.n_classes else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)
        (or zero with zero_init_proj, so every block starts as the identity)."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scale", False):
                std = 0.0 if self.cfg.zero_init_proj else std / math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if hasattr(self, "wpe"):
                n -= self.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        pos: int = 0,
        last_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for idx (B, T) whose first token sits at position pos, or, when targets are
        given, the loss alone (training needs nothing else, and skips holding the logits).

        With a cache, keys/values of these positions are stored and earlier ones reused.
        last_only computes logits for the final position only (generation needs nothing else).
        """
        x = self.hidden(idx, cache, pos)
        if targets is not None:
            return None, self.loss(x, targets)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x), None

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of final hidden states x against targets (-1: none).

        Training with many (tokens x vocab) logits goes through LinearCrossEntropy in chunks.
        """
        x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
        chunked = (
            torch.is_grad_enabled()
            and type(self.lm_head) is Linear  # not a LoRA-wrapped head
            and x.size(0) * self.cfg.vocab_size >= CHUNKED_LOSS_MIN
        )
        if chunked:
            return LinearCrossEntropy.apply(x, self.lm_head.weight, targets, LOSS_CHUNK_ROWS)
        logits = self.lm_head(x)
        return F.cross_entropy(logits.float(), targets, ignore_index=-1)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        """Final (normalised) hidden states (B, T, n_embd): what the LM and task heads read."""
        B, T = idx.shape
        if pos + T > self.cfg.block_size:
            raise ValueError(
                f"sequence of {pos + T} tokens exceeds block_size {self.cfg.block_size}"
            )
        x = self.wte(idx)
        rope = None
        if self.cfg.positions == "learned":
            x = x + self.wpe(torch.arange(pos, pos + T, device=idx.device))
        else:
            rope = (self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T])
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, cache, pos)
        return self.norm_f(x)

    def prepack(self) -> GPT:
        """Prepack every linear's weight for fast CPU inference (see Linear); a no-op
        elsewhere, and cheap when already done. Call again after changing the weights' dtype."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.prepack()
        return self

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        param = self.wte.weight
        return KVCache(self.cfg, batch, length or self.cfg.block_size, param.device, param.dtype)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6N plus attention (PaLM, appendix B).

        N counts every weight a token is multiplied by: not the embedding lookups, but the
        unembedding matmul, which a tied head shares with the (lookup-only) token embedding.
        """
        cfg = self.cfg
        n = self.num_params(non_embedding=True)
        if cfg.tie_embeddings:
            n += self.lm_head.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights) only, not on biases or norms."""
    decay, no_decay = [], []
    seen = set()
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
