"""The decoder: a GPT-style transformer, readable top to bottom.

Token (+ learned position) embeddings, n_layer blocks of causal self-attention and an MLP with
pre-normalisation and residual connections, a final norm and the unembedding. Switches select
GPT-2's choices or modern ones (rotary positions, RMSNorm, SwiGLU, no bias). Attention goes
through torch's scaled_dot_product_attention so the fused kernels (flash on CUDA) are used;
the fast paths of causal attention, RMSNorm, the linear layers and the loss live in
gptcli.kernels.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptcli.kernels import (
    Linear,
    causal_attention,
    fill_in_chunks,
    linear_cross_entropy,
    rms_norm,
)
from gptcli.recipe import ModelConfig


def mlp_hidden_size(cfg: ModelConfig) -> int:
    if cfg.mlp_hidden:
        return cfg.mlp_hidden
    if cfg.mlp == "swiglu":  # 2/3 of 4x keeps the parameter count of a 4x two-matrix MLP
        return 64 * math.ceil(8 * cfg.n_embd / 3 / 64)
    return 4 * cfg.n_embd


class Embedding(nn.Embedding):
    """nn.Embedding whose N(0, 1) initialisation draws the same numbers in parts
    (kernels.fill_in_chunks), so a large table's build can be interrupted; no padding row."""

    def reset_parameters(self) -> None:
        fill_in_chunks(self.weight, lambda part: part.normal_(0.0, 1.0))


class RMSNorm(nn.Module):
    """x / rms(x) * weight (kernels.rms_norm picks the kernel for training or inference)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(cfg: ModelConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim) of each position's angles, both halves alike."""
    head_dim = cfg.n_embd // cfg.n_head
    if torch.empty(0).device.type == "meta":
        # a model built on the meta device for its shapes (the memory estimate, the plan):
        # arange and outer there would first import torch's Python meta kernels, about 3 s
        empty = torch.empty(length, head_dim)
        return empty, empty
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(length).float(), inv_freq)  # (T, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of each head, as Llama does, in x's
    dtype, as HF's Llama does (upcasting to fp32 costs extra kernels)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-x2, x1), dim=-1)
    return torch.addcmul(x * cos.to(x.dtype), rotated_half, sin.to(x.dtype))


class KVCache:
    """Preallocated keys and values for every layer, so decoding one token costs O(T), not O(T²).

    Row r of the cache is one sequence; `rows` views a range of them, so an engine serving
    many requests keeps one cache and gives each request its own rows (slots)."""

    def __init__(self, cfg: ModelConfig, batch: int, length: int, device, dtype) -> None:
        head_dim = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = length
        self.picked: torch.Tensor | None = None  # rows of a `pick` view, in its batch order

    def rows(self, start: int, stop: int, length: int | None = None) -> KVCache:
        """Rows start..stop-1 and their first `length` positions, sharing this cache's memory."""
        view = copy.copy(self)
        view.length = length or self.length
        view.k = self.k[:, start:stop, :, : view.length]
        view.v = self.v[:, start:stop, :, : view.length]
        return view

    def pick(self, rows: list[int]) -> KVCache:
        """Any rows, in this order, as one batch at one position: writes land in them, reads
        copy their prefixes out (several requests' prompts prefilled in one forward)."""
        view = copy.copy(self)
        view.picked = torch.tensor(rows, device=self.k.device)
        return view

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: int | torch.Tensor):
        """Write the keys and values (B, H, T, D) of positions pos.. and return every key and
        value these rows' queries read, with the mask of what each query may see (None: all).

        pos is one position for every row, or (B,) positions, one per row, for one token each:
        rows of a batch then sit at different points of their sequences (continuous batching)."""
        B, _, T, _ = k.shape
        if isinstance(pos, int):
            rows = slice(None, B) if self.picked is None else self.picked
            self.k[layer, rows, :, pos : pos + T] = k
            self.v[layer, rows, :, pos : pos + T] = v
            mask = None  # one new token sees everything before it
            if T > 1:  # a chunk after a prefix: query i sees keys up to pos + i
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=k.device).tril(pos)
            return self.k[layer, rows, :, : pos + T], self.v[layer, rows, :, : pos + T], mask
        assert self.picked is None, "picked rows share one position"
        rows = torch.arange(B, device=k.device)
        self.k[layer][rows, :, pos] = k[:, :, 0]
        self.v[layer][rows, :, pos] = v[:, :, 0]
        keys = torch.arange(self.length, device=k.device)
        mask = (keys[None, :] <= pos[:, None])[:, None, None, :]  # (B, 1, 1, length)
        return self.k[layer, :B], self.v[layer, :B], mask


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

    def forward(self, x, rope, cache: KVCache | None, pos, mask=None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is not None:  # which earlier tokens each token sees, chosen by the caller
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        else:
            k, v, mask = cache.store(self.layer, k, v, pos)
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
        elif self.kind == "gelu_erf":  # the exact GELU (nanoGPT's, BERT's)
            h = F.gelu(self.up(x))
        else:  # "gelu": GPT-2's tanh approximation, which its checkpoints were trained with
            h = F.gelu(self.up(x), approximate="tanh")
        return F.dropout(self.down(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self, x, rope=None, cache: KVCache | None = None, pos: int | torch.Tensor = 0, mask=None
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, cache, pos, mask)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer)")
        self.cfg = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.positions == "learned":
            self.wpe = Embedding(cfg.block_size, cfg.n_embd)
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
        # training only: False, True (every block) or "selective" (every other block)
        self.activation_checkpointing: bool | str = False
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)
        (or zero with zero_init_proj, so every block starts as the identity)."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scale", False):
                std = 0.0 if self.cfg.zero_init_proj else std / math.sqrt(2 * self.cfg.n_layer)
            fill_in_chunks(module.weight, lambda part: part.normal_(0.0, std))
            if module.bias is not None:
                fill_in_chunks(module.bias, lambda part: part.zero_())
        elif isinstance(module, nn.Embedding):
            fill_in_chunks(module.weight, lambda part: part.normal_(0.0, 0.02))

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
        pos: int | torch.Tensor = 0,
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
        """Mean next-token cross-entropy of final hidden states x against targets (-1: none)."""
        x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
        return linear_cross_entropy(x, self.lm_head, targets)

    def hidden(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pos: int | torch.Tensor = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final (normalised) hidden states (B, T, n_embd): what the LM and task heads read.

        positions (B, T) and mask (B, 1, T, T), True where a token may attend, lay several
        sequences in one row (e.g. the choices of a question after one shared context). With a
        cache, pos may be (B,) positions, one per row, for one token each (batched decoding).
        """
        B, T = idx.shape
        if isinstance(pos, torch.Tensor):  # one token per row, each at its own position
            positions = pos[:, None]
        if positions is None and pos + T > self.cfg.block_size:
            raise ValueError(
                f"sequence of {pos + T} tokens exceeds block_size {self.cfg.block_size}"
            )
        x = self.wte(idx)
        rope = None
        if self.cfg.positions == "learned":
            if positions is None:
                positions = torch.arange(pos, pos + T, device=idx.device)
            x = x + self.wpe(positions)
        elif positions is None:
            rope = (self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T])
        else:  # one table row per token, shared by the heads
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            if cache is None and self.recomputes(i):
                x = checkpoint(block, x, rope, None, 0, mask, use_reentrant=False)
            else:
                x = block(x, rope, cache, pos, mask)
        return self.norm_f(x)

    def recomputes(self, layer: int) -> bool:
        """Whether block layer keeps only its input for backward and recomputes the rest,
        trading a second forward of the block for its activations."""
        mode = self.activation_checkpointing
        if not mode or not self.training or not torch.is_grad_enabled():
            return False
        return mode is True or layer % 2 == 0

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
