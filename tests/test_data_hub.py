"""hf:OWNER/NAME sources: a folder laid out as a Hub dataset repository, read through the same
datasets call as the Hub (a folder of the dataset's name in the working directory is what
datasets.load_dataset reads first), and the Hub's refusals served from 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import socket
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import assert_one_line_error, gptcli, gptcli_without

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets")

WORDS = "once upon a time there was a little cat who liked to play in the sun with a friend"

RECIPE = textwrap.dedent(
    """\
    name: hub
    data:
      source: {SOURCE}
      dev: {DEV}
    tokenizer:
      vocab_size: 300
    model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32}
    train: {batch_size: 4, max_steps: 2, warmup_steps: 1, eval_every: 2, eval_batches: 1,
            save_every: 2, log_every: 1}
    """
)


@pytest.fixture
def hub_home(tmp_path, monkeypatch) -> Path:
    """The caches in tmp_path, no token, offline: nothing reaches ~/.cache or the network."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return home


def hub_folder(root: Path, name: str = "owner/tales") -> Path:
    """root/OWNER/NAME as a Hub dataset repository: data/{train,validation}-*.parquet."""
    data = root / name / "data"
    data.mkdir(parents=True)
    for split, n in (("train", 300), ("validation", 20)):
        texts = [f"{split} {i}: " + " ".join(WORDS.split()[i % 7 :]) * 3 for i in range(n)]
        table = pa.table({"text": texts, "id": list(range(n))})
        pq.write_table(table, data / f"{split}-00000-of-00001.parquet")
    return root / name


def recipe(tmp_path: Path, source: str, dev: str = '""') -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(RECIPE.replace("{SOURCE}", source).replace("{DEV}", dev))
    return path


def test_hf_source_tokenizes_pretrains_and_stays_up_to_date(tmp_path, hub_home):
    hub_folder(tmp_path)
    r = recipe(tmp_path, "hf:owner/tales", '{path: "hf:owner/tales", split: validation}')
    proc = gptcli("tokenize", str(r), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hf:owner/tales (train): hf, 300 documents read" in proc.stderr
    assert "hf:owner/tales (validation): hf, 20 documents read" in proc.stderr
    manifest = json.loads((tmp_path / "runs/hub/data/manifest.json").read_text())
    assert manifest["train"]["documents"] == 300 and manifest["val"]["documents"] == 20
    corpus = manifest["corpus"]["sources"]
    assert [(s["dataset"], s["split"]) for s in corpus] == [
        ("owner/tales", "train"),
        ("owner/tales", "validation"),
    ]
    assert all(s["resolved"] for s in corpus)

    # offline, with the dataset out of reach: the shards made from it are still used
    (tmp_path / "owner").rename(tmp_path / "elsewhere")
    proc = gptcli("pretrain", str(r), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "shards in runs/hub/data are up to date" in proc.stderr
    assert "taken as unchanged" in proc.stderr
    assert (tmp_path / "runs/hub/checkpoints/step-0000002/model.safetensors").is_file()


def test_hf_rows_and_dev_feed_a_finetune_task_like_files(tmp_path, hub_home, monkeypatch):
    from gptcli import finetune
    from gptcli import recipe as recipe_mod

    hub_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    dev = {"path": "hf:owner/tales", "split": "validation"}
    r = recipe_mod.from_dict({"data": {"source": ["hf:owner/tales"], "dev": dev}})
    train, dev = finetune.task_records(r, tmp_path)
    assert len(train) == 300 and len(dev) == 20
    assert dev[0][1]["text"].startswith("validation 0:")


def test_offline_with_nothing_cached_exits_2_in_one_line(tmp_path, hub_home):
    proc = gptcli("tokenize", str(recipe(tmp_path, "hf:owner/absent")), "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "hf:owner/absent", "HF_HUB_OFFLINE")
    assert not (tmp_path / "runs/hub/data/train.bin").exists()


@pytest.mark.parametrize(
    "source, needles",
    [
        ({"text_field": "body"}, ["no field 'body'", "text, id"]),
        ({"split": "test"}, ["'test'", "train", "validation"]),
        ({"config": "big"}, ["'big'", "default", "config"]),
    ],
    ids=["text-field", "split", "config"],
)
def test_hf_mistakes_name_what_the_dataset_has(tmp_path, hub_home, monkeypatch, source, needles):
    from gptcli import recipe as recipe_mod
    from gptcli.console import UserError
    from gptcli.data import corpus

    hub_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    r = recipe_mod.from_dict({"data": {"source": {"path": "hf:owner/tales", **source}}})
    with pytest.raises(UserError) as e:
        next(corpus.iter_documents(r.data, r.seed))
    for needle in ["hf:owner/tales", *needles]:
        assert needle in str(e.value), (needle, str(e.value))
    assert "\n" not in str(e.value)


class _Refusing(http.server.BaseHTTPRequestHandler):
    """The Hub's answers to a gated dataset without a token (401) and to an unknown name."""

    def _answer(self) -> None:
        gated = "/gated" in self.path
        code, error = (401, "GatedRepo") if gated else (404, "RepoNotFound")
        body = json.dumps({"error": "refused"}).encode()
        self.send_response(code)
        self.send_header("X-Error-Code", error)
        self.send_header("X-Error-Message", "refused")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_hub(hub_home, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield
    server.shutdown()
    server.server_close()


def test_gated_and_unknown_hub_datasets_exit_2_naming_the_fix(tmp_path, refusing_hub):
    proc = gptcli("tokenize", str(recipe(tmp_path, "hf:owner/gated")), "--quiet", cwd=tmp_path)
    assert_one_line_error(
        proc, "hf:owner/gated", "HF_TOKEN", "https://huggingface.co/datasets/owner/gated"
    )
    proc = gptcli("tokenize", str(recipe(tmp_path, "hf:owner/unknown")), "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "hf:owner/unknown", "no such dataset")


@pytest.mark.parametrize("reason", ["does not resolve", "refused"])
def test_an_unreachable_hub_fails_at_once_in_one_line(
    tmp_path, hub_home, unreachable, monkeypatch, reason
):
    """Not a line per retry of huggingface_hub (about 25 s of them): the one line says what
    could not be reached and the way out."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    endpoint = unreachable[reason]
    r = recipe(tmp_path, "hf:owner/tales")
    proc = gptcli("tokenize", str(r), "--quiet", cwd=tmp_path, env={"HF_ENDPOINT": endpoint})
    assert_one_line_error(proc, "hf:owner/tales", endpoint, reason, "HF_HUB_OFFLINE=1")


def test_the_hub_check_asks_nothing_offline_and_goes_through_a_proxy(
    hub_home, unreachable, monkeypatch
):
    from gptcli.console import UserError
    from gptcli.data import hub

    monkeypatch.setenv("HF_ENDPOINT", unreachable["does not resolve"])
    hub.check_reachable("hf:owner/tales")  # HF_HUB_OFFLINE: the cache answers
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.create_server(("127.0.0.1", 0)) as listening:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        hub.check_reachable("hf:owner/tales")
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", unreachable["refused"])
    with pytest.raises(UserError, match="through the proxy 127.0.0.1.*refused"):
        hub.check_reachable("hf:owner/tales")


def test_missing_datasets_names_the_install_line(tmp_path, hub_home):
    r = recipe(tmp_path, "hf:owner/tales")
    proc = gptcli_without("datasets", "tokenize", str(r), "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "pip install 'gptcli[hf]'")


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"source": {"path": "corpus.txt", "split": "validation"}}, "data.source"),
        ({"source": "x.txt", "dev": {"path": "hf:a/b", "split": 3}}, "data.dev.split"),
        ({"source": "hf:a b"}, "hf:OWNER/NAME"),
    ],
)
def test_hub_keys_are_checked_before_any_work(tmp_path, data, needle, hub_home):
    from gptcli import recipe as recipe_mod
    from gptcli.console import UserError
    from gptcli.data import corpus

    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        r = recipe_mod.from_dict({"data": data})
        corpus.fingerprint(r.data, r.seed, tmp_path)
