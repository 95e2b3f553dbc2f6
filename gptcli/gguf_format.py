"""GGUF export: one .gguf file that llama.cpp runs, for Llama-family models.

GGUF is written only. The tensors take llama.cpp's names, and the query and key rows are
permuted from rotate-half (gptcli, HF) to the interleaved pairs llama.cpp's rope expects;
the byte-level BPE tokenizer goes in as its token list and merges.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptcli import tokenizer
from gptcli.checkpoint_tensors import Loaded, untied_weights
from gptcli.console import UserError
from gptcli.files import write_folder
from gptcli.hf_format import LLAMA, family
from gptcli.model import mlp_hidden_size
from gptcli.recipe import ModelConfig


def _permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rotate-half (HF/gptcli) -> interleaved pairs (llama.cpp), as convert_hf_to_gguf does."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_tensors(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's tensor names, Q and K rows permuted for its rope."""
    if family(cfg) != LLAMA:
        raise UserError(
            "GGUF export writes the Llama family (positions: rope, norm: rmsnorm, mlp: swiglu); "
            "use --format hf for GPT-2-style models"
        )
    if cfg.bias:
        raise UserError("GGUF export needs bias: false (llama.cpp's llama has no MLP biases)")
    w = untied_weights(weights)
    C = cfg.n_embd
    out = {"token_embd.weight": w["wte.weight"], "output_norm.weight": w["norm_f.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = w["lm_head.weight"]  # absent: llama.cpp reuses token_embd
    for i in range(cfg.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        q, k, v = w[p + "attn.qkv.weight"].split(C, dim=0)
        out[b + "attn_norm.weight"] = w[p + "norm1.weight"]
        out[b + "attn_q.weight"] = _permute_rope(q, cfg.n_head)
        out[b + "attn_k.weight"] = _permute_rope(k, cfg.n_head)
        out[b + "attn_v.weight"] = v
        out[b + "attn_output.weight"] = w[p + "attn.proj.weight"]
        out[b + "ffn_norm.weight"] = w[p + "norm2.weight"]
        out[b + "ffn_gate.weight"] = w[p + "mlp.gate.weight"]
        out[b + "ffn_up.weight"] = w[p + "mlp.up.weight"]
        out[b + "ffn_down.weight"] = w[p + "mlp.down.weight"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def _bpe_vocab(tok_path: Path) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their GGUF types, and merges as 'a b' strings, from tokenizer.json."""
    data = json.loads(tok_path.read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"{tok_path}: GGUF export needs a byte-level BPE tokenizer")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab.update(special)
    tokens = [""] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        tokens[i] = text
    types = [3 if t in special else 1 for t in tokens]  # CONTROL for specials, NORMAL otherwise
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def export_gguf(loaded: Loaded, out: Path) -> Path:
    """One .gguf file (F32) in DIR with llama architecture metadata and the BPE tokenizer."""
    try:
        import gguf
    except ImportError:
        raise UserError(
            "--format gguf needs the gguf package: pip install 'gptcli[export]'"
        ) from None
    cfg = loaded.config
    tensors = gguf_tensors(cfg, loaded.weights)
    tok_path = loaded.path / tokenizer.TOKENIZER_FILE
    tokens, types, merges = _bpe_vocab(tok_path)
    eot = tokenizer.eot_id(tokenizer.load(tok_path))
    name = loaded.path.parent.parent.name if loaded.path.parent.name == "checkpoints" else "model"

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp / f"{name}.gguf"), "llama")
        w.add_name(name)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(mlp_hidden_size(cfg))
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_head)
        w.add_rope_dimension_count(cfg.n_embd // cfg.n_head)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
        w.add_add_bos_token(True)  # <|endoftext|> in front, as in training
        for tname, t in tensors.items():
            w.add_tensor(tname, t.numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return write_folder(out, write)
