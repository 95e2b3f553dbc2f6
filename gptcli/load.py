"""The one `load` every reader of a model calls, and the `resolve` that says what a path names.

`load` takes whatever a user names as a model (a gptcli checkpoint, a run folder, a LoRA
checkpoint, an HF transformers folder, or nothing: the newest run under ./runs) and returns
full weights, so sample, chat, eval, finetune's init, inspect and export never ask what the
path was. Training resumes its own checkpoints through checkpoint_tensors instead, so it
never imports the HF or GGUF code.
"""

from __future__ import annotations

from pathlib import Path

from gptcli import checkpoint, checkpoint_tensors, hf_format
from gptcli.checkpoint import newest_under
from gptcli.checkpoint_tensors import Loaded
from gptcli.console import UserError
from gptcli.recipe import ModelConfig


def resolve(path: str | Path | None) -> Path:
    """What a model path names: an HF folder as it is, a gptcli checkpoint or a run folder's
    newest one, or (None) the newest complete checkpoint under ./runs."""
    if path is None:
        found = newest_under(Path("runs"))
        if found is None:
            raise UserError(
                "no complete checkpoint under ./runs (train one with `gptcli pretrain RECIPE` "
                "or pass --checkpoint PATH)"
            )
        return found
    p = Path(path)
    if p.exists() and hf_format.is_hf_folder(p):
        return p
    return checkpoint.resolve(p)


def load(path: str | Path | None) -> Loaded:
    """Any model a user can name, with full weights (see resolve). A LoRA checkpoint is
    combined with its base (checked by sha256), which may itself be any model."""
    found = resolve(path)
    if hf_format.is_hf_folder(found):
        return hf_format.load_hf(found)
    return checkpoint_tensors.load_full(found, read_base=load)


def metadata(found: Path) -> tuple[ModelConfig, dict]:
    """A resolved model's config and task ({"task": {...}}, "lora" for adapters), checked,
    without reading its weights: a server refuses a bad config.json before it binds a port."""
    if hf_format.is_hf_folder(found):
        hf_format.safetensors_files(found)  # pickled weights are refused before anything else
        return hf_format.model_config_from_hf(found), {"task": {"kind": "lm"}}
    return checkpoint.read_config(found / "config.json")
