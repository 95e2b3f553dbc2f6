"""HF transformers folders: export and import with logits parity (both families, both
directions), and the refusals of what gptcli cannot express."""

import json
import shutil

import pytest
import torch
from conftest import SHARED_DATA, assert_one_line_error, gptcli, small_checkpoint, write_recipe

from gptcli import hf_format, load, tokenizer
from gptcli.checkpoint_tensors import build_model
from gptcli.console import UserError
from gptcli.inspect import describe

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Once upon a time, Tom's dog ran home.",
    "  spaces\tand\nnew lines, ünïcode 🙂 <|endoftext|>",
]


@pytest.fixture(scope="module")
def models(format_models, tmp_path_factory):
    """conftest's checkpoints of both families (runs/mini is the GPT-2 one), and a GPT-2 with
    the exact GELU (nanoGPT's; HF's activation_function "gelu")."""
    tok_path = format_models["gpt2"] / "tokenizer.json"
    root = tmp_path_factory.mktemp("gelu-erf")
    return {**format_models, "gpt2-erf": small_checkpoint(root, "ge", tok_path, mlp="gelu_erf")}


def _ours(path):
    return build_model(load.load(path)).eval()


def _assert_logits_equal(ours, hf, vocab):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (3, ours.cfg.block_size), generator=gen)
    with torch.no_grad():
        a, b = ours(x)[0], hf(x).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-4
    assert a.std() > 0.1  # real logits, not a degenerate all-equal output


@pytest.mark.parametrize(
    "name,cls",
    [
        ("gpt2", "GPT2LMHeadModel"),
        ("gpt2-nobias-untied", "GPT2LMHeadModel"),
        ("gpt2-erf", "GPT2LMHeadModel"),
        ("llama", "LlamaForCausalLM"),
        ("llama-bias-untied", "LlamaForCausalLM"),
    ],
)
def test_export_hf_logits_and_tokenizer_parity(models, tmp_path, name, cls):
    out = tmp_path / "hf"
    proc = gptcli("export", str(models[name]), "--format", "hf", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert "model.safetensors" in info["files"] and "tokenizer.json" in info["files"]
    hf, loading = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == cls
    if cls == "GPT2LMHeadModel":  # the logits alone barely tell the two GELUs apart here
        assert hf.config.activation_function == ("gelu" if name == "gpt2-erf" else "gelu_new")
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    ours = _ours(models[name])
    _assert_logits_equal(ours, hf.eval(), ours.cfg.vocab_size)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours_tok = tokenizer.load(models[name] / "tokenizer.json")
    eot = tokenizer.eot_id(ours_tok)
    sample = (SHARED_DATA / "tinyshakespeare.txt").read_text()[:3000]
    read_back = tokenizer.load(out)  # gptcli reading the export encodes without the prefix
    for text in [*TEXTS, sample]:  # HF adds <|endoftext|> in front, as training had it
        assert hf_tok(text)["input_ids"] == [eot, *ours_tok.encode(text).ids]
        assert read_back.encode(text, add_special_tokens=False).ids == ours_tok.encode(text).ids
    assert hf_tok.eos_token == hf_tok.bos_token == "<|endoftext|>"
    assert hf_tok.model_max_length == ours.cfg.block_size

    # the same greedy text from HF's tokenizer and generate as from `gptcli sample`
    prompt = "Once upon a time"
    inputs = hf_tok(prompt, return_tensors="pt")
    with torch.no_grad():
        generated = hf.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_ids = generated[0, inputs["input_ids"].shape[1] :].tolist()
    new_ids = new_ids[: new_ids.index(eot)] if eot in new_ids else new_ids
    hf_text = hf_tok.decode(new_ids)
    readers = [models[name], out] if name == "gpt2" else [models[name]]  # and read back
    for model_path in readers:
        proc = gptcli(
            *("sample", "-c", str(model_path), "-p", prompt, "--temperature", "0"),
            *("--max-new-tokens", "12", "--json", "--dtype", "fp32"),
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["text"] == hf_text, model_path


# GPT-2 folders by their activation_function: GPT-2's own tanh GELU, and the exact one
HF_GPT2_GELU = {"gpt2": "gelu_new", "gpt2-erf": "gelu"}
MLP_READ = {"gpt2": "gelu", "gpt2-erf": "gelu_erf", "llama": "swiglu"}


def _hf_made_by_transformers(folder, tok_path, family):
    """A model created and saved by transformers itself (not by our exporter)."""
    torch.manual_seed(2)
    vocab = tokenizer.load(tok_path).get_vocab_size()
    if family in HF_GPT2_GELU:
        config = transformers.GPT2Config(
            vocab_size=vocab,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=2,
            activation_function=HF_GPT2_GELU[family],
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            rope_theta=500.0,
        )
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(tok_path, folder / "tokenizer.json")
    return model.eval()


@pytest.mark.parametrize("family", ["gpt2", "gpt2-erf", "llama"])
def test_import_hf_folder_parity_sample_and_finetune(models, trained, tmp_path, family):
    tok_path = trained / "runs" / "mini" / "tokenizer.json"
    folder = tmp_path / f"hf-{family}"
    hf = _hf_made_by_transformers(folder, tok_path, family)
    ours = _ours(folder)
    assert ours.cfg.positions == ("learned" if family in HF_GPT2_GELU else "rope")
    assert ours.cfg.mlp == MLP_READ[family]
    info = describe(str(folder))  # inspect explains an HF folder as gptcli reads it
    assert info["source"] == "hf" and info["params"]["total"] == ours.num_params()
    _assert_logits_equal(ours, hf, ours.cfg.vocab_size)

    # sample --checkpoint takes the folder: greedy text equals HF's greedy continuation
    tok = tokenizer.load(tok_path)
    eot = tokenizer.eot_id(tok)
    prompt = "Once upon a time"
    ids = [eot, *tok.encode(prompt, add_special_tokens=False).ids]
    with torch.no_grad():
        hf_ids = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=eot,
            pad_token_id=eot,
        )[0, len(ids) :].tolist()
    hf_ids = hf_ids[: hf_ids.index(eot)] if eot in hf_ids else hf_ids
    proc = gptcli(
        "sample",
        "-c",
        str(folder),
        "-p",
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["text"] == tokenizer.decode(tok, hf_ids)

    if family == "llama":  # init: in a finetune recipe takes it too
        corpus = tmp_path / "c.txt"
        corpus.write_text("The cat sat on the mat.<|endoftext|>" * 100)
        recipe = write_recipe(
            tmp_path,
            f"name: from-hf\ninit: {folder}\ntask: lm\ndata:\n  source: {corpus}\n"
            "train:\n  batch_size: 2\n  max_steps: 2\n  warmup_steps: 1\n  eval_batches: 1\n",
            "ft.yaml",
        )
        proc = gptcli("finetune", str(recipe), "--quiet", "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        tuned = load.load(tmp_path / "runs" / "from-hf")
        assert tuned.config.positions == "rope" and tuned.config.mlp_hidden == 80


def test_import_refuses_pickles_and_unsupported_configs(tmp_path, gptcli_inproc):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (folder / "tokenizer.json").write_text("{}")
    proc = gptcli_inproc("sample", "-c", str(folder), "-p", "hi")
    assert_one_line_error(proc, "pytorch_model.bin is a pickle")
    (folder / "pytorch_model.bin").unlink()
    torch_save_free = {"wte.weight": torch.zeros(2, 2)}
    from safetensors.torch import save_file

    save_file(torch_save_free, str(folder / "model.safetensors"))
    with pytest.raises(UserError, match="missing key 'n_head'"):
        load.load(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="model_type 'bert'"):
        load.load(folder)


def test_hf_folder_whose_config_disagrees_with_its_weights(models, tmp_path, gptcli_inproc):
    folder = hf_format.export_hf(load.load(models["gpt2"]), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 48}))
    proc = gptcli_inproc("sample", "-c", str(folder), "-p", "hi")
    vocab = config["vocab_size"]
    assert_one_line_error(proc, "'transformer.wte.weight'", f"[{vocab}, 32]", f"[{vocab}, 48]")


# the smallest configs of each family gptcli imports
HF_CONFIGS = {
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 300},
    "llama": {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_size": 32,
        "vocab_size": 300,
        "intermediate_size": 64,
    },
}


def _bad_values(family):
    """One bad value for every HF key gptcli maps, by the key's type (and for a shape key,
    0), plus a null where null means 'the default'."""
    by_type = {int: "2", float: "x", bool: "no"}
    for key, hint in hf_format.HF_KEYS[family].items():
        yield family, key, by_type[hint]
    for key in hf_format.HF_SHAPE_KEYS[family]:
        yield family, key, 0
    if family == "llama":
        yield family, "rope_parameters", {"rope_theta": "x"}
        yield family, "rope_scaling", "linear"


@pytest.mark.parametrize(("family", "key", "value"), [*_bad_values("gpt2"), *_bad_values("llama")])
def test_a_bad_hf_config_value_is_refused_naming_file_and_key(tmp_path, family, key, value):
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIGS[family], key: value}))
    with pytest.raises(UserError, match=f"'{key}[.']") as e:
        hf_format.model_config_from_hf(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_hf_config_reads_with_nulls_and_refuses_missing_shape_keys(tmp_path, family):
    config = {**HF_CONFIGS[family], "n_inner": None, "head_dim": None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert hf_format.model_config_from_hf(tmp_path).vocab_size == 300
    for key in hf_format.HF_SHAPE_KEYS[family]:
        missing = {k: v for k, v in config.items() if k != key}
        (tmp_path / "config.json").write_text(json.dumps(missing))
        with pytest.raises(UserError, match=f"missing key '{key}'"):
            hf_format.model_config_from_hf(tmp_path)
