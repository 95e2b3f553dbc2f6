"""Other tools' formats, and the one `load` every reader of a model calls.

`load` takes whatever a user names as a model (a gptcli checkpoint, a run folder, a LoRA
checkpoint, an HF transformers folder, or nothing: the newest run under ./runs) and returns
full weights, so sample, finetune's init, inspect and export never ask what the path was.

HF transformers conversion goes both ways; GGUF (llama.cpp) is written only.
gptcli's GPT is, by its switches, either GPT-2 (learned positions, LayerNorm, GELU-tanh) or a
Llama (rotary on the two halves of each head, RMSNorm, SwiGLU). Those are exactly the two HF
classes we write, so an exported folder loads with `AutoModelForCausalLM` and no custom code;
any other mix of switches has no HF class and is refused. Weights are renamed (and, for GPT-2's
Conv1D, transposed), never re-computed, so the logits agree to float32 rounding.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import processors

from gptcli import __version__, checkpoint, console, tokenizer
from gptcli.console import UserError
from gptcli.model import GPT, mlp_hidden_size
from gptcli.recipe import EOT, ModelConfig

GPT2 = "gpt2"
LLAMA = "llama"
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def family(cfg: ModelConfig) -> str:
    """GPT2 or LLAMA, or a UserError naming the switch that no HF class expresses."""
    switches = (cfg.positions, cfg.norm, cfg.mlp)
    if switches == ("learned", "layernorm", "gelu"):
        return GPT2
    if switches == ("rope", "rmsnorm", "swiglu"):
        return LLAMA
    raise UserError(
        f"positions={cfg.positions}, norm={cfg.norm}, mlp={cfg.mlp} has no HF transformers "
        "class (GPT-2 is learned/layernorm/gelu, Llama is rope/rmsnorm/swiglu); "
        "train with one of those combinations to export"
    )


# --------------------------------------------------------------------------- gptcli -> HF


def hf_config(cfg: ModelConfig, eot: int | None) -> dict[str, Any]:
    common = {
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
        "gptcli_version": __version__,
    }
    if family(cfg) == GPT2:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.n_embd,
            "n_positions": cfg.block_size,
            "n_inner": mlp_hidden_size(cfg),
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            **common,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.n_embd,
        "intermediate_size": mlp_hidden_size(cfg),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.n_embd // cfg.n_head,
        "max_position_embeddings": cfg.block_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # >= 5
        "rope_scaling": None,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": 0.0,
        **common,
    }


def _full_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict with lm_head present (tied checkpoints store it once, as wte)."""
    w = dict(weights)
    if "lm_head.weight" not in w:
        w["lm_head.weight"] = w["wte.weight"]
    return w


def to_hf_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2's Conv1D transpose) every tensor into the HF layout."""
    w = _full_weights(cfg, weights)
    C = cfg.n_embd
    out: dict[str, torch.Tensor] = {}
    if family(cfg) == GPT2:
        zeros = torch.zeros  # GPT-2 always has biases: bias=False exports exact zeros

        def bias(name: str, size: int) -> torch.Tensor:
            return w.get(name, zeros(size))

        out["transformer.wte.weight"] = w["wte.weight"]
        out["transformer.wpe.weight"] = w["wpe.weight"]
        hidden = mlp_hidden_size(cfg)
        for i in range(cfg.n_layer):
            p, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[h + theirs + ".weight"] = w[p + ours + ".weight"]
                out[h + theirs + ".bias"] = bias(p + ours + ".bias", C)
            for ours, theirs, size in (
                ("attn.qkv", "attn.c_attn", 3 * C),
                ("attn.proj", "attn.c_proj", C),
                ("mlp.up", "mlp.c_fc", hidden),
                ("mlp.down", "mlp.c_proj", C),
            ):
                out[h + theirs + ".weight"] = w[p + ours + ".weight"].t()
                out[h + theirs + ".bias"] = bias(p + ours + ".bias", size)
        out["transformer.ln_f.weight"] = w["norm_f.weight"]
        out["transformer.ln_f.bias"] = bias("norm_f.bias", C)
    else:
        out["model.embed_tokens.weight"] = w["wte.weight"]
        for i in range(cfg.n_layer):
            p, h = f"blocks.{i}.", f"model.layers.{i}."
            out[h + "input_layernorm.weight"] = w[p + "norm1.weight"]
            out[h + "post_attention_layernorm.weight"] = w[p + "norm2.weight"]
            for kind in ("weight", "bias"):
                if p + f"attn.qkv.{kind}" not in w:
                    continue
                q, k, v = w[p + f"attn.qkv.{kind}"].split(C, dim=0)
                out[h + f"self_attn.q_proj.{kind}"] = q
                out[h + f"self_attn.k_proj.{kind}"] = k
                out[h + f"self_attn.v_proj.{kind}"] = v
                out[h + f"self_attn.o_proj.{kind}"] = w[p + f"attn.proj.{kind}"]
                for ours, theirs in (
                    ("gate", "gate_proj"),
                    ("up", "up_proj"),
                    ("down", "down_proj"),
                ):
                    out[h + f"mlp.{theirs}.{kind}"] = w[p + f"mlp.{ours}.{kind}"]
        out["model.norm.weight"] = w["norm_f.weight"]
    out["lm_head.weight"] = w["lm_head.weight"]
    if cfg.tie_embeddings:
        del out["lm_head.weight"]  # HF re-ties it to the embedding on load
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def tokenizer_config(tok_path: Path, block_size: int) -> dict[str, Any]:
    """HF's tokenizer settings: <|endoftext|> is bos and eos, and encoding adds it in front as
    in training, within the model's context."""
    tok = tokenizer.load(tok_path)
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    eot = EOT if EOT in specials else None
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": None,
        "add_bos_token": eot is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }


def export_tokenizer(tok_path: Path, out: Path) -> None:
    """tokenizer.json for HF: encoding adds <|endoftext|> in front, as every training document
    and gptcli's sampling have it (gptcli itself encodes without the post-processor)."""
    tok = tokenizer.load(tok_path)
    eot = tok.token_to_id(EOT)
    if eot is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{EOT}:0 $A:0",
            pair=f"{EOT}:0 $A:0 {EOT}:1 $B:1",
            special_tokens=[(EOT, eot)],
        )
    tok.save(str(out))


def _write_folder(out: Path, write: Callable[[Path], None]) -> Path:
    """Build the output in a temp sibling and rename it into place; never touch an existing DIR."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty (choose a new --out)")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    try:
        with console.writing(f"--out {out}"):
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write(tmp)
            if out.exists():
                out.rmdir()
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_hf(loaded: checkpoint.Loaded, out: Path) -> Path:
    cfg = loaded.config
    family(cfg)  # refuse before writing anything
    tok_path = loaded.path / tokenizer.TOKENIZER_FILE
    tok = tokenizer.load(tok_path)
    eot = tok.token_to_id(EOT)

    def write(tmp: Path) -> None:
        weights = to_hf_weights(cfg, loaded.weights)
        checkpoint.save_safetensors(weights, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, eot), indent=2))
        export_tokenizer(tok_path, tmp / tokenizer.TOKENIZER_FILE)
        tok_config = tokenizer_config(tok_path, cfg.block_size)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
        gen = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))

    return _write_folder(out, write)


# --------------------------------------------------------------------------- HF -> gptcli


def is_hf_folder(path: Path) -> bool:
    """A folder with an HF config.json (it names model_type) rather than a gptcli one."""
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        data = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and "model_type" in data and "format_version" not in data


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise UserError(f"{path}: {what}; gptcli imports plain GPT-2 and Llama configs only")


def model_config_from_hf(path: Path) -> ModelConfig:
    """Translate an HF GPT-2 or Llama config.json, refusing anything our GPT cannot express."""
    cfg_path = path / "config.json"
    try:
        c = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
    kind = c.get("model_type")
    if kind == "gpt2":
        act = c.get("activation_function", "gelu_new")
        _need(act in GELU_TANH, cfg_path, f"activation_function {act!r} is not tanh-GELU")
        _need(
            not c.get("scale_attn_by_inverse_layer_idx") and not c.get("reorder_and_upcast_attn"),
            cfg_path,
            "scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported",
        )
        _need(c.get("scale_attn_weights", True), cfg_path, "scale_attn_weights=false")
        return ModelConfig(
            n_layer=c["n_layer"],
            n_head=c["n_head"],
            n_embd=c["n_embd"],
            block_size=c.get("n_positions", 1024),
            vocab_size=c["vocab_size"],
            mlp_hidden=c.get("n_inner") or 4 * c["n_embd"],
            bias=True,
            tie_embeddings=c.get("tie_word_embeddings", True),
            norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
        )
    if kind == "llama":
        heads = c["num_attention_heads"]
        _need(
            c.get("num_key_value_heads", heads) == heads,
            cfg_path,
            "grouped-query attention (num_key_value_heads != num_attention_heads)",
        )
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        _need(head_dim * heads == c["hidden_size"], cfg_path, "head_dim * heads != hidden_size")
        _need(c.get("hidden_act", "silu") == "silu", cfg_path, f"hidden_act {c.get('hidden_act')}")
        rope = c.get("rope_parameters") or {}
        scaling = c.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", scaling.get("rope_type", "default"))
        _need(rope_type == "default", cfg_path, f"rope_type {rope_type!r}")
        attn_bias, mlp_bias = c.get("attention_bias", False), c.get("mlp_bias", False)
        _need(attn_bias == mlp_bias, cfg_path, "attention_bias differs from mlp_bias")
        return ModelConfig(
            n_layer=c["num_hidden_layers"],
            n_head=heads,
            n_embd=c["hidden_size"],
            block_size=c.get("max_position_embeddings", 2048),
            vocab_size=c["vocab_size"],
            positions="rope",
            norm="rmsnorm",
            mlp="swiglu",
            mlp_hidden=c["intermediate_size"],
            bias=bool(attn_bias),
            tie_embeddings=c.get("tie_word_embeddings", False),
            rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
            norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        )
    raise UserError(
        f"{cfg_path}: model_type {kind!r} is not supported (gptcli imports gpt2 and llama)"
    )


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards an index names; pickled .bin weights are refused."""
    files = [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if not files[0].is_file() and index.is_file():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / name for name in shard_names]
    if not files[0].is_file():
        pickled = [f.name for f in path.glob("*.bin")]
        hint = f" ({pickled[0]} is a pickle, which gptcli never loads)" if pickled else ""
        raise UserError(
            f"{path}: no model.safetensors{hint}; re-save it with "
            "save_pretrained(DIR, safe_serialization=True)"
        )
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            weights.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{f}: unreadable safetensors file ({e})") from None
    return weights


def from_hf_weights(cfg: ModelConfig, hf: dict[str, torch.Tensor], path: Path) -> dict:
    """The inverse of to_hf_weights: HF names -> gptcli names."""
    w = dict(hf)

    def take(name: str) -> torch.Tensor:
        if name not in w:
            raise UserError(f"{path}: weights lack {name!r} that config.json implies")
        return w.pop(name)

    out: dict[str, torch.Tensor] = {}
    if cfg.positions == "learned":
        t = "transformer."
        if not any(k.startswith(t) for k in w):
            t = ""  # GPT2Model checkpoints store names without the prefix
        out["wte.weight"] = take(t + "wte.weight")
        out["wpe.weight"] = take(t + "wpe.weight")
        for i in range(cfg.n_layer):
            p, h = f"blocks.{i}.", f"{t}h.{i}."
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                out[p + ours + ".weight"] = take(h + theirs + ".weight")
                out[p + ours + ".bias"] = take(h + theirs + ".bias")
            for ours, theirs in (
                ("attn.qkv", "attn.c_attn"),
                ("attn.proj", "attn.c_proj"),
                ("mlp.up", "mlp.c_fc"),
                ("mlp.down", "mlp.c_proj"),
            ):
                out[p + ours + ".weight"] = take(h + theirs + ".weight").t().contiguous()
                out[p + ours + ".bias"] = take(h + theirs + ".bias")
            w.pop(h + "attn.bias", None)  # old GPT-2 files store the causal mask buffer
            w.pop(h + "attn.masked_bias", None)
        out["norm_f.weight"] = take(t + "ln_f.weight")
        out["norm_f.bias"] = take(t + "ln_f.bias")
    else:
        out["wte.weight"] = take("model.embed_tokens.weight")
        kinds = ("weight", "bias") if cfg.bias else ("weight",)
        for i in range(cfg.n_layer):
            p, h = f"blocks.{i}.", f"model.layers.{i}."
            out[p + "norm1.weight"] = take(h + "input_layernorm.weight")
            out[p + "norm2.weight"] = take(h + "post_attention_layernorm.weight")
            for kind in kinds:
                qkv = [take(h + f"self_attn.{n}_proj.{kind}") for n in "qkv"]
                out[p + f"attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
                out[p + f"attn.proj.{kind}"] = take(h + f"self_attn.o_proj.{kind}")
                for ours, theirs in (
                    ("gate", "gate_proj"),
                    ("up", "up_proj"),
                    ("down", "down_proj"),
                ):
                    out[p + f"mlp.{ours}.{kind}"] = take(h + f"mlp.{theirs}.{kind}")
            w.pop(h + "self_attn.rotary_emb.inv_freq", None)
        out["norm_f.weight"] = take("model.norm.weight")
    if "lm_head.weight" in w:
        head = w.pop("lm_head.weight")
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = head
    elif not cfg.tie_embeddings:
        raise UserError(f"{path}: weights lack 'lm_head.weight' (tie_word_embeddings is false)")
    if w:
        raise UserError(f"{path}: unexpected weight {sorted(w)[0]!r} for this config.json")
    return {k: v.float().contiguous() for k, v in out.items()}


def load_hf(path: Path) -> checkpoint.Loaded:
    """A local HF GPT-2/Llama folder as a gptcli checkpoint (converted in memory)."""
    hf_weights = _read_hf_weights(path)
    try:
        cfg = model_config_from_hf(path)
    except KeyError as e:
        raise UserError(f"{path / 'config.json'}: missing key {e.args[0]!r}") from None
    tok_path = path / tokenizer.TOKENIZER_FILE
    if not tok_path.is_file():
        raise UserError(f"{path}: no tokenizer.json (gptcli needs a fast tokenizer file)")
    with torch.device("meta"):  # shapes only: no memory for a model that is never run
        expected = to_hf_weights(cfg, GPT(cfg).state_dict())
    checkpoint.check_shapes(expected, hf_weights, checkpoint.weights_file(path), "config.json")
    weights = from_hf_weights(cfg, hf_weights, path)
    return checkpoint.Loaded(path, cfg, weights, {"step": 0, "source": "hf"})


# --------------------------------------------------------------------------- GGUF


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
    w = _full_weights(cfg, weights)
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


def export_gguf(loaded: checkpoint.Loaded, out: Path) -> Path:
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

    return _write_folder(out, write)


def export_gptcli(loaded: checkpoint.Loaded, out: Path) -> Path:
    """A standalone gptcli checkpoint folder: LoRA adapters merged into full weights, so it
    needs no base checkpoint (sample, finetune and inspect read it as any other)."""
    info = {"task": loaded.info["task"]}
    model = GPT(loaded.config)
    checkpoint.load_weights(model, loaded.weights, checkpoint.weights_file(loaded.path))

    def write(tmp: Path) -> None:
        weights = checkpoint.weights_for_save(model, info)
        meta = {"format": "pt", "merged_from": str(loaded.path)}
        checkpoint.save_safetensors(weights, tmp / "model.safetensors", meta)
        config = checkpoint.config_json(loaded.config, info)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        shutil.copyfile(loaded.path / tokenizer.TOKENIZER_FILE, tmp / tokenizer.TOKENIZER_FILE)
        state = {k: v for k, v in loaded.state.items() if k != "optimizer_param_groups"}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))

    return _write_folder(out, write)


# --------------------------------------------------------------------------- any model, loaded


def resolve(path: str | Path | None) -> Path:
    """What a model path names: an HF folder as it is, a gptcli checkpoint or a run folder's
    newest one, or (None) the newest complete checkpoint under ./runs."""
    if path is None:
        found = checkpoint.newest_under(Path("runs"))
        if found is None:
            raise UserError(
                "no complete checkpoint under ./runs (train one with `gptcli pretrain RECIPE` "
                "or pass --checkpoint PATH)"
            )
        return found
    p = Path(path)
    if p.exists() and is_hf_folder(p):
        return p
    return checkpoint.resolve(p)


def load(path: str | Path | None, merge_lora: bool = True) -> checkpoint.Loaded:
    """Any model a user can name, with full weights (see resolve). A LoRA checkpoint is
    combined with its base (checked by sha256); merge_lora=False keeps the adapters apart, as
    resuming their training needs."""
    found = resolve(path)
    if is_hf_folder(found):
        return load_hf(found)
    loaded = checkpoint.load(found)
    lora_info = loaded.info.get("lora")
    if lora_info is not None:
        base = load(checkpoint.lora_base(found, lora_info))
        loaded.weights = checkpoint.with_base(lora_info, loaded.weights, base.weights, merge_lora)
    return loaded
