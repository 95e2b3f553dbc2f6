"""HF transformers folders, both ways: gptcli's checkpoints as GPT-2 or Llama, and back.

gptcli's GPT is, by its switches, either GPT-2 (learned positions, LayerNorm, GELU in GPT-2's
tanh form or the exact one, which HF's `activation_function` names) or a Llama (rotary on the
two halves of each head, RMSNorm, SwiGLU). Those are exactly the two HF classes we write, so an
exported folder loads with `AutoModelForCausalLM` and no custom code; any other mix of switches
has no HF class and is refused. Weights are renamed (and, for GPT-2's Conv1D, transposed), never
re-computed, so the logits agree to float32 rounding. A local HF folder of either class reads
back as a gptcli checkpoint, converted in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tokenizers import processors

from gptcli import __version__, tokenizer
from gptcli.checkpoint import is_hf_config, weights_file
from gptcli.checkpoint_tensors import (
    Loaded,
    check_shapes,
    read_safetensors,
    save_safetensors,
    untied_weights,
)
from gptcli.console import UserError
from gptcli.files import naming_file, read_json, typed_fields, write_folder
from gptcli.model import GPT, mlp_hidden_size
from gptcli.recipe import EOT, ModelConfig, need

GPT2 = "gpt2"
LLAMA = "llama"
# HF's GPT-2 activation_function names for each of our GELUs (the first is what export writes)
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
GELU_ERF = ("gelu", "gelu_python")
HF_ACTIVATION = {"gelu": GELU_TANH[0], "gelu_erf": GELU_ERF[0]}


def family(cfg: ModelConfig) -> str:
    """GPT2 or LLAMA, or a UserError naming the switch that no HF class expresses."""
    if (cfg.positions, cfg.norm) == ("learned", "layernorm") and cfg.mlp in HF_ACTIVATION:
        return GPT2
    if (cfg.positions, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu"):
        return LLAMA
    raise UserError(
        f"positions={cfg.positions}, norm={cfg.norm}, mlp={cfg.mlp} has no HF transformers "
        "class (GPT-2 is learned/layernorm/gelu or gelu_erf, Llama is rope/rmsnorm/swiglu); "
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
            "activation_function": HF_ACTIVATION[cfg.mlp],
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


def to_hf_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2's Conv1D transpose) every tensor into the HF layout."""
    w = untied_weights(weights)
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


def export_hf(loaded: Loaded, out: Path) -> Path:
    cfg = loaded.config
    family(cfg)  # refuse before writing anything
    tok_path = loaded.path / tokenizer.TOKENIZER_FILE
    tok = tokenizer.load(tok_path)
    eot = tok.token_to_id(EOT)

    def write(tmp: Path) -> None:
        weights = to_hf_weights(cfg, loaded.weights)
        save_safetensors(weights, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, eot), indent=2))
        export_tokenizer(tok_path, tmp / tokenizer.TOKENIZER_FILE)
        tok_config = tokenizer_config(tok_path, cfg.block_size)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
        gen = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))

    return write_folder(out, write)


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
    return isinstance(data, dict) and is_hf_config(data)


# The HF config keys gptcli maps, with their types; the shape keys must be present.
HF_KEYS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "n_layer": int,
        "n_head": int,
        "n_embd": int,
        "vocab_size": int,
        "n_positions": int,
        "tie_word_embeddings": bool,
        "layer_norm_epsilon": float,
    },
    "llama": {
        "num_hidden_layers": int,
        "num_attention_heads": int,
        "hidden_size": int,
        "vocab_size": int,
        "intermediate_size": int,
        "max_position_embeddings": int,
        "num_key_value_heads": int,
        "tie_word_embeddings": bool,
        "rope_theta": float,
        "rms_norm_eps": float,
        "attention_bias": bool,
        "mlp_bias": bool,
    },
}
HF_SHAPE_KEYS = {
    "gpt2": ("n_layer", "n_head", "n_embd", "vocab_size"),
    "llama": (
        "num_hidden_layers",
        "num_attention_heads",
        "hidden_size",
        "vocab_size",
        "intermediate_size",
    ),
}
HF_OPTIONAL_INTS = ("n_inner", "head_dim")  # null means "the default"


def read_hf_config(cfg_path: Path) -> dict:
    """An HF config.json with the keys gptcli maps checked by type (as recipe keys are), and
    the shape keys required: exit 2 naming the file, the key and what was expected."""
    c = read_json(cfg_path)
    kind = c.get("model_type")
    if kind not in HF_KEYS:
        raise UserError(
            f"{cfg_path}: model_type {kind!r} is not supported (gptcli imports gpt2 and llama)"
        )
    missing = [k for k in HF_SHAPE_KEYS[kind] if k not in c]
    if missing:
        raise UserError(f"{cfg_path}: missing key '{missing[0]}' (the model's shape)")
    typed = typed_fields(cfg_path, c, HF_KEYS[kind], "hf.")
    present = {k: c[k] for k in HF_OPTIONAL_INTS if c.get(k) is not None}
    typed |= typed_fields(cfg_path, present, dict.fromkeys(present, int), "hf.")
    for nested in ("rope_parameters", "rope_scaling"):  # null or a mapping; its theta a number
        if c.get(nested) is not None:
            entry = typed_fields(cfg_path, {nested: c[nested]}, {nested: dict}, "hf.")[nested]
            theta = {k: v for k, v in entry.items() if k == "rope_theta"}
            typed_fields(cfg_path, theta, {"rope_theta": float}, f"hf.{nested}.", strip="hf.")
    with naming_file(cfg_path, "hf."):
        for key in [*HF_SHAPE_KEYS[kind], *present]:  # before any division by them
            need(f"hf.{key}", typed[key], typed[key] > 0, "a positive integer")
    return {**c, **typed}


def checked_model_config(cfg_path: Path, cfg: ModelConfig) -> ModelConfig:
    """cfg (translated from an HF config) through the recipe's own checks, named by the file."""
    with naming_file(cfg_path, "model."):
        cfg.check()
        need("model.vocab_size", cfg.vocab_size, cfg.vocab_size > 0, "a positive integer")
    return cfg


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise UserError(f"{path}: {what}; gptcli imports plain GPT-2 and Llama configs only")


def model_config_from_hf(path: Path) -> ModelConfig:
    """Translate an HF GPT-2 or Llama config.json, refusing anything our GPT cannot express."""
    cfg_path = path / "config.json"
    c = read_hf_config(cfg_path)
    kind = c.get("model_type")
    if kind == "gpt2":
        act = c.get("activation_function", "gelu_new")
        known = act in GELU_TANH + GELU_ERF
        _need(known, cfg_path, f"activation_function {act!r} is neither tanh nor exact GELU")
        _need(
            not c.get("scale_attn_by_inverse_layer_idx") and not c.get("reorder_and_upcast_attn"),
            cfg_path,
            "scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported",
        )
        _need(c.get("scale_attn_weights", True), cfg_path, "scale_attn_weights=false")
        return checked_model_config(
            cfg_path,
            ModelConfig(
                n_layer=c["n_layer"],
                n_head=c["n_head"],
                n_embd=c["n_embd"],
                block_size=c.get("n_positions", 1024),
                vocab_size=c["vocab_size"],
                mlp="gelu" if act in GELU_TANH else "gelu_erf",
                mlp_hidden=c.get("n_inner") or 4 * c["n_embd"],
                bias=True,
                tie_embeddings=c.get("tie_word_embeddings", True),
                norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
            ),
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
        return checked_model_config(
            cfg_path,
            ModelConfig(
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
            ),
        )
    raise UserError(
        f"{cfg_path}: model_type {kind!r} is not supported (gptcli imports gpt2 and llama)"
    )


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards an index names; pickled .bin weights are refused."""
    weights: dict[str, torch.Tensor] = {}
    for f in safetensors_files(path):
        try:
            weights.update(read_safetensors(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{f}: unreadable safetensors file ({e})") from None
    return weights


def safetensors_files(path: Path) -> list[Path]:
    """The files an HF folder's weights are in: model.safetensors, or the shards its index
    names; a folder with pickled .bin weights only is refused (gptcli never unpickles)."""
    files = [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if not files[0].is_file() and index.is_file():
        weight_map = read_json(index).get("weight_map")
        ok = isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
        if not ok or not weight_map:
            raise UserError(f"{index}: key 'weight_map' must be a mapping of tensor names to files")
        shard_names = sorted(set(weight_map.values()))
        files = [path / name for name in shard_names]
    if not files[0].is_file():
        pickled = [f.name for f in path.glob("*.bin")]
        hint = f" ({pickled[0]} is a pickle, which gptcli never loads)" if pickled else ""
        raise UserError(
            f"{path}: no model.safetensors{hint}; re-save it with "
            "save_pretrained(DIR, safe_serialization=True)"
        )
    return files


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


def load_hf(path: Path) -> Loaded:
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
    check_shapes(expected, hf_weights, weights_file(path), "config.json")
    weights = from_hf_weights(cfg, hf_weights, path)
    return Loaded(path, cfg, weights, {"step": 0, "source": "hf"})
