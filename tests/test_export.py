"""`gptcli export`: the formats it names, and what it refuses before writing anything."""

import pytest
from conftest import assert_one_line_error, small_checkpoint

from gptcli import export
from gptcli.console import UserError


@pytest.fixture
def models(format_models):
    """conftest's checkpoints of both families (runs/mini is the GPT-2 one)."""
    return format_models


def test_export_refusals(models, tmp_path, gptcli_inproc):
    mixed = small_checkpoint(
        models["root"], "mixed", models["gpt2"] / "tokenizer.json", positions="rope"
    )
    proc = gptcli_inproc("export", str(mixed), "--format", "hf", "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, "no HF transformers class", "positions=rope")
    assert not (tmp_path / "x").exists()
    proc = gptcli_inproc(
        "export", str(models["gpt2"]), "--format", "gguf", "--out", str(tmp_path / "g")
    )
    assert_one_line_error(proc, "Llama family")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    proc = gptcli_inproc(
        "export", str(models["gpt2"]), "--format", "hf", "--out", str(tmp_path / "full")
    )
    assert_one_line_error(proc, "not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no partial or temp folders


def test_an_unknown_format_is_refused(tmp_path):
    with pytest.raises(UserError, match="--format must be hf, gguf or gptcli"):
        export.export(str(tmp_path), "onnx", str(tmp_path / "o"))
