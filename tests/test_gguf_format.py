"""GGUF export: the file reads back equal, and llama.cpp runs it like gptcli."""

import pytest
import torch
from conftest import gptcli

from gptcli import gguf_format, load, tokenizer
from gptcli.checkpoint_tensors import build_model


@pytest.fixture
def models(format_models):
    """conftest's checkpoints of both families (runs/mini is the GPT-2 one)."""
    return format_models


def _ours(path):
    return build_model(load.load(path)).eval()


def test_export_gguf_reads_back_equal(models, tmp_path):
    gguf = pytest.importorskip("gguf", reason="the gguf package comes with .[export]")
    out = tmp_path / "gguf"
    proc = gptcli("export", str(models["llama"]), "--format", "gguf", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("*.gguf")
    reader = gguf.GGUFReader(str(path))
    loaded = load.load(models["llama"])
    expected = gguf_format.gguf_tensors(loaded.config, loaded.weights)
    got = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name].reshape(tensor.shape), tensor), name
    # the rope permutation is llama.cpp's: undoing it gives back our query rows
    C, H = loaded.config.n_embd, loaded.config.n_head
    q = got["blk.0.attn_q.weight"].reshape(H, C // H // 2, 2, C).swapaxes(1, 2).reshape(C, C)
    assert torch.equal(q, loaded.weights["blocks.0.attn.qkv.weight"][:C])
    fields = reader.fields
    arch = fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == loaded.config.vocab_size
    assert int(fields["llama.block_count"].parts[-1][0]) == 2
    assert bool(fields["tokenizer.ggml.add_bos_token"].parts[-1][0])  # <|endoftext|> in front


def test_gguf_runs_in_llama_cpp(models, tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python has no prebuilt wheel here (never compiled in CI)"
    )
    out = tmp_path / "gguf"
    assert gptcli("export", str(models["llama"]), "-f", "gguf", "-o", str(out)).returncode == 0
    (path,) = out.glob("*.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False)
    tok = tokenizer.load(models["llama"] / "tokenizer.json")
    ids = [tokenizer.eot_id(tok), *tok.encode("Once upon", add_special_tokens=False).ids]
    theirs = []
    for token in llm.generate(ids, top_k=1, temp=0.0):
        theirs.append(token)
        if len(theirs) == 4:
            break
    ours = _ours(models["llama"])
    x = torch.tensor([ids])
    mine = []
    with torch.no_grad():
        for _ in range(4):
            nxt = int(ours(x)[0][0, -1].argmax())
            mine.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
    assert theirs == mine
