import inspect
import json
import re

import pytest
import torch
from conftest import (
    CHAT_MESSAGES,
    REPO,
    SFT,
    SHARED_DATA,
    assert_one_line_error,
    gptcli,
    torchrun,
    write_recipe,
)

FINETUNE = """\
name: mini-ft
init: runs/mini
task: lm
data:
  source: {source}
train:
  batch_size: 4
  max_steps: 6
  warmup_steps: 1
  eval_every: 3
  eval_batches: 2
  save_every: 0
  lr: 3.0e-4
"""


def test_finetune_lm_continues_from_checkpoint_with_its_tokenizer(trained, tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text("The robot liked to paint the sky.<|endoftext|>" * 200)
    recipe = write_recipe(trained, FINETUNE.format(source=corpus), "ft.yaml")
    proc = gptcli("finetune", str(recipe), "--json", "--quiet", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    run = trained / "runs" / "mini-ft"
    assert summary["run_dir"] == "runs/mini-ft" and summary["step"] == 6
    base_tok = (trained / "runs" / "mini" / "tokenizer.json").read_bytes()
    assert (run / "tokenizer.json").read_bytes() == base_tok
    assert (run / "checkpoints" / "step-0000006" / "tokenizer.json").read_bytes() == base_tok
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    pretrained_loss = json.loads(
        (trained / "runs" / "mini" / "metrics.jsonl").read_text().splitlines()[-1]
    )["loss"]
    assert first["loss"] < pretrained_loss + 2.0  # it starts from the trained weights, not noise
    assert (
        gptcli(
            "sample", "-c", str(run), "--prompt", "The robot", "--max-new-tokens", "5", cwd=trained
        ).returncode
        == 0
    )


def test_finetune_on_real_corpus_path(trained):
    source = SHARED_DATA / "tinystories" / "TinyStories_all_data-data00.head.txt"
    recipe = write_recipe(
        trained, FINETUNE.format(source=source).replace("mini-ft", "mini-ts"), "ts.yaml"
    )
    proc = gptcli("finetune", str(recipe), "--quiet", "--json", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["val_loss"] > 0


def test_finetune_bad_init(trained, gptcli_inproc):
    recipe = write_recipe(
        trained, FINETUNE.format(source="x.txt").replace("runs/mini", "runs/none"), "bad.yaml"
    )
    assert_one_line_error(gptcli_inproc("finetune", str(recipe), cwd=trained), "runs/none")
    recipe.write_text(FINETUNE.format(source="x.txt").replace("init: runs/mini\n", ""))
    assert_one_line_error(gptcli_inproc("finetune", str(recipe), cwd=trained), "init")


def test_finetune_model_keys_must_agree_with_init(trained, gptcli_inproc):
    """A model key the finetune recipe gives is checked against init (even at its default
    value): a shape key that differs exits 2 naming both values; dropout is applied."""
    recipe = write_recipe(trained, FINETUNE.format(source="x.txt"), "shape.yaml")
    proc = gptcli_inproc("finetune", str(recipe), "--set", "model.n_layer=4", cwd=trained)
    assert_one_line_error(proc, "model.n_layer", "4", "2")
    proc = gptcli_inproc("finetune", str(recipe), "--set", "model.positions=rope", cwd=trained)
    assert_one_line_error(proc, "model.positions", "rope", "learned")
    corpus = trained / "dropout.txt"
    corpus.write_text("The robot liked to paint the sky.<|endoftext|>" * 200)
    text = FINETUNE.format(source=corpus).replace("mini-ft", "mini-drop")
    recipe = write_recipe(trained, text + "model:\n  n_layer: 2\n  dropout: 0.1\n", "drop.yaml")
    proc = gptcli("finetune", str(recipe), cwd=trained)
    assert proc.returncode == 0, proc.stderr
    assert "model.dropout 0.0 -> 0.1" in proc.stderr
    ckpt = trained / "runs" / "mini-drop" / "checkpoints" / "step-0000006"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["dropout"] == 0.1 and config["n_layer"] == 2


# --------------------------------------------------------------------------- classify, sft, lora

CLASSIFY = """\
name: {name}
init: runs/mini
task:
  kind: classify
  format: {format}
{task_extra}data:
  source: {source}
  dev: "{dev}"
train:
  batch_size: 8
  max_steps: {steps}
  warmup_steps: 1
  eval_every: 4
  save_every: 0
  log_every: 2
  lr: 1.0e-3
{extra}"""


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _finetune(
    folder, name, fmt, source, dev="", steps=6, task_extra="", extra="", *flags, run=gptcli
):
    """Finetune a classifier recipe in folder; run: gptcli, or gptcli_inproc for bad input."""
    text = CLASSIFY.format(
        name=name,
        format=fmt,
        source=source,
        dev=dev,
        steps=steps,
        task_extra=task_extra,
        extra=extra,
    )
    recipe = write_recipe(folder, text, f"{name}.yaml")
    return run("finetune", str(recipe), "--json", *flags, cwd=folder)


def _sst(folder, n_train=96, n_dev=24):
    lines = (SHARED_DATA / "classify" / "sst2_train.jsonl").read_text().splitlines()
    dev = (SHARED_DATA / "classify" / "sst2_dev.jsonl").read_text().splitlines()
    (folder / "sst_train.jsonl").write_text("\n".join(lines[:n_train]) + "\n")
    (folder / "sst_dev.jsonl").write_text("\n".join(dev[:n_dev]) + "\n")
    return folder / "sst_train.jsonl", folder / "sst_dev.jsonl"


SST_LABELS = "  label_names: [negative, positive]\n"


def test_classify_single_text_trains_head_and_samples_label_distribution(trained):
    train_file, dev_file = _sst(trained)
    proc = _finetune(trained, "sst", "single", train_file, dev_file, 6, SST_LABELS)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert 0.0 <= summary["val_accuracy"] <= 1.0 and "val_macro_f1" in summary
    assert summary["majority_accuracy"] >= 0.5
    # long SST sentences do not fit the 32-token context: one warning with a count
    assert proc.stderr.count("longer than the context") == 2  # train and dev files
    run = trained / "runs" / "sst"
    tok = json.loads((run / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert {"<|start|>", "<|delim|>", "<|extract|>"} <= set(added)
    ckpt = run / "checkpoints" / "step-0000006"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["n_classes"] == 2 and config["vocab_size"] == 403
    assert config["task"]["label_names"] == ["negative", "positive"]
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in m for m in metrics[:-1])  # evaluated during training too
    shown = gptcli("inspect", str(run), cwd=trained)
    assert shown.returncode == 0 and "negative, positive" in shown.stdout  # task and labels

    proc = gptcli("sample", "-c", str(run), "--prompt", "a gorgeous , witty film", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert sorted(words[0::2]) == ["negative", "positive"]
    assert abs(sum(float(p) for p in words[1::2]) - 1.0) < 1e-3
    assert float(words[1]) >= float(words[3])  # likeliest first

    # a dev file scored in a pipeline: one JSON object per input line, with the gold label
    dev_lines = dev_file.read_text().splitlines()[:5]
    proc = gptcli("sample", "-c", str(run), "--json", cwd=trained, input="\n".join(dev_lines))
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert len(answers) == 5
    for line, answer in zip(dev_lines, answers, strict=True):
        gold = ["negative", "positive"][json.loads(line)["label"]]
        assert answer["gold"] == gold and answer["correct"] == (answer["label"] == gold)
        assert answer["label"] == max(answer["probs"], key=answer["probs"].get)


def test_classify_sequences_follow_gpt1_transformations(trained):
    from gptcli import tokenizer
    from gptcli.recipe import TaskConfig
    from gptcli.tasks import classify
    from gptcli.tasks.base import add_special_tokens

    tok = tokenizer.load(trained / "runs" / "mini" / "tokenizer.json")
    add_special_tokens(tok, classify.CLASSIFY_TOKENS)
    start, delim, extract = (tok.token_to_id(t) for t in classify.CLASSIFY_TOKENS)

    def task(fmt, block=32):
        return classify.ClassifyTask(
            TaskConfig(kind="classify", format=fmt), tok, block, ["a", "b"]
        )

    def ids(text):
        return tok.encode(text, add_special_tokens=False).ids

    a, b = "the cat sat", "a dog ran"
    pair = task("pair")
    rows = [
        pair.sequence(ids(x), ids(y))[0]
        for x, y in pair.segments({"premise": a, "hypothesis": b}, "t")
    ]
    assert rows == [[start, *ids(a), delim, *ids(b), extract]]
    sim = task("similarity")
    segs = sim.segments({"sentence1": a, "sentence2": b}, "t")
    assert segs == [(a, b), (b, a)]  # both orders; their final states are added
    choice = task("choice")
    segs = choice.segments({"context": a, "choices": ["x", "y", "z"]}, "t")
    assert segs == [(a, "x"), (a, "y"), (a, "z")]
    single = task("single")
    assert single.sequence(ids(a), None)[0] == [start, *ids(a), extract]
    # too long: the premise loses its left part; delimiter, hypothesis and extract stay
    long_premise = list(range(100, 140))
    row, cut = task("pair", block=16).sequence(long_premise, [7, 8, 9])
    assert cut and len(row) == 16
    assert row == [start, *long_premise[-10:], delim, 7, 8, 9, extract]


def _pairs(folder):
    import random

    rng = random.Random(0)
    words = ["red", "blue", "green", "cat", "dog", "sun", "rain", "tree"]
    records = []
    for i in range(64):
        a = " ".join(rng.choice(words) for _ in range(4))
        b = a if i % 2 else " ".join(rng.choice(words) for _ in range(4))
        records.append({"premise": a, "hypothesis": b, "label": "same" if i % 2 else "other"})
    return _write_jsonl(folder / "pairs.jsonl", records)


def test_classify_pair_and_similarity_read_json_lines(trained, gptcli_inproc):
    source = _pairs(trained)
    for fmt, fields in (("pair", ""), ("similarity", "  fields: [premise, hypothesis]\n")):
        proc = _finetune(trained, f"c-{fmt}", fmt, source, "", 4, fields)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["val_accuracy"] is not None
        lines = source.read_text().splitlines()[:3]
        proc = gptcli("sample", "-c", f"runs/c-{fmt}", cwd=trained, input="\n".join(lines))
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.splitlines()
        assert len(out) == 3 and all(sorted(ln.split()[0::2]) == ["other", "same"] for ln in out)
    # a pair classifier cannot guess which field is which from plain text
    proc = gptcli_inproc("sample", "-c", "runs/c-pair", "--prompt", "just text", cwd=trained)
    assert_one_line_error(proc, "premise", "hypothesis")


def test_classify_multiple_choice_softmax_over_answers(trained):
    records = [
        {
            "context": "Tom was thirsty so",
            "choices": ["he drank water", "the sky is green", "no"],
            "label": i % 3,
        }
        for i in range(30)
    ]
    source = _write_jsonl(trained / "choice.jsonl", records)
    proc = _finetune(trained, "c-choice", "choice", source, "", 4)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(
        (trained / "runs" / "c-choice" / "checkpoints" / "step-0000004" / "config.json").read_text()
    )
    assert config["n_classes"] == 1  # one score per answer
    line = json.dumps({"context": "Tom was", "choices": ["a", "b", "c", "d"], "label": 3})
    proc = gptcli("sample", "-c", "runs/c-choice", "--json", cwd=trained, input=line)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert len(answer["probs"]) == 4 and abs(sum(answer["probs"]) - 1) < 1e-3
    assert answer["gold"] == 3 and answer["label"] in range(4)


def test_auxiliary_lm_loss_weight(trained):
    """loss = task loss + lm_weight * LM loss: with lm_weight 0 only the head's loss remains."""
    train_file, dev_file = _sst(trained)
    losses = {}
    for weight in (0.0, 1.0):
        extra = SST_LABELS + f"  lm_weight: {weight}\n"
        proc = _finetune(trained, f"lm-{weight}", "single", train_file, dev_file, 2, extra)
        assert proc.returncode == 0, proc.stderr
        losses[weight] = json.loads(proc.stdout)["train_loss"]
    assert losses[0.0] < 1.5  # two-class cross-entropy
    assert losses[1.0] > losses[0.0] + 2.0  # plus the LM loss of a barely trained model


def test_classify_bad_input(trained, gptcli_inproc):
    def refused(name, train, dev):
        args = (trained, name, "single", train, dev, 2, SST_LABELS, "", "--quiet")
        return _finetune(*args, run=gptcli_inproc)

    short = [{"text": f"short text {i}", "label": i % 2} for i in range(20)]
    train_file = _write_jsonl(trained / "short.jsonl", short)
    dev_file = _write_jsonl(trained / "short_dev.jsonl", short[:4])
    bad_dev = _write_jsonl(
        trained / "bad_dev.jsonl", [{"text": "fine", "label": 0}, {"text": "x", "label": 7}]
    )
    assert_one_line_error(
        refused("bad1", train_file, bad_dev), "bad_dev.jsonl:2", "unknown label 7"
    )
    missing = _write_jsonl(trained / "missing.jsonl", [{"sentence": "no text field", "label": 0}])
    assert_one_line_error(refused("bad2", missing, dev_file), "missing.jsonl:1", "'text'")
    broken = trained / "broken.jsonl"
    broken.write_text('{"text": "ok", "label": 0}\n{"text": \n')
    assert_one_line_error(refused("bad3", broken, dev_file), "broken.jsonl:2", "not valid JSON")
    escaped = _write_jsonl(trained / "escaped.jsonl", [{"text": "a \udcff", "label": 1}])
    proc = refused("bad4", escaped, dev_file)
    assert_one_line_error(proc, "escaped.jsonl:1: not UTF-8 at byte offset 2")
    for name in ("bad1", "bad2", "bad3", "bad4"):
        assert not (trained / "runs" / name / "checkpoints").exists()


def test_classify_reads_tsv_and_learns_labels(trained):
    tsv = trained / "topics.tsv"
    rows = ["text\tlabel"] + [
        f"story number {i}\t{'sport' if i % 2 else 'news'}" for i in range(40)
    ]
    tsv.write_text("\n".join(rows) + "\n")
    proc = _finetune(trained, "tsv", "single", tsv, "", 2)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(
        (trained / "runs" / "tsv" / "checkpoints" / "step-0000002" / "config.json").read_text()
    )
    assert config["task"]["label_names"] == ["news", "sport"]  # learned from the training file


def test_classify_reads_parquet_and_a_zstd_dev_file(trained):
    """Task examples come through the same source layer as a corpus: Parquet, .jsonl.zst."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    train_file, dev_file = _sst(trained)
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), trained / "sst_train.parquet")
    dev_zst = trained / "sst_dev.jsonl.zst"
    dev_zst.write_bytes(zstandard.ZstdCompressor().compress(dev_file.read_bytes()))
    proc = _finetune(trained, "pq", "single", trained / "sst_train.parquet", dev_zst, 2, SST_LABELS)
    assert proc.returncode == 0, proc.stderr
    assert 0.0 <= json.loads(proc.stdout)["val_accuracy"] <= 1.0
    assert f"{len(rows)} training and 24 dev examples" in proc.stderr


def test_sft_masks_prompt_tokens_and_chats(trained, chat_trained, gptcli_inproc):
    """The chat template's masks, then conftest's chat-sft run (prompt/response records and a
    messages one) samples in its template."""
    from gptcli import tokenizer
    from gptcli.tasks import sft
    from gptcli.tasks.base import add_special_tokens

    tok = tokenizer.load(trained / "runs" / "mini" / "tokenizer.json")
    add_special_tokens(tok, sft.CHAT_TOKENS)
    ids, is_response = sft.chat_ids(tok, CHAT_MESSAGES)
    answer = tok.encode("Four.", add_special_tokens=False).ids + [tok.token_to_id("<|end|>")]
    assert [
        i for i, r in zip(ids, is_response, strict=True) if r
    ] == answer  # only the reply trains
    assert ids[0] == tokenizer.eot_id(tok) and ids.count(tok.token_to_id("<|end|>")) == 3

    task = sft.SFTTask.__new__(sft.SFTTask)
    task.tok, task.block_size = tok, 32
    record = {"prompt": "Count to 0.", "response": "0 1"}
    inputs, targets = task.encode([("x:1", record)], "x", ["prompt", "response"])[0]
    reply = tok.encode("0 1", add_special_tokens=False).ids + [tok.token_to_id("<|end|>")]
    assert [t for t in targets if t != -1] == reply

    run = chat_trained
    config = json.loads((run / "checkpoints" / "step-0000004" / "config.json").read_text())
    assert config["task"] == {"kind": "sft", "template": "gptcli-chat-v1"}
    args = ("sample", "-c", str(run), "--prompt", "Count to 3.", "--max-new-tokens", "5")
    chat = gptcli(*args, "--seed", "1", "--json", cwd=trained)
    plain = gptcli(*args, "--seed", "1", "--json", "--no-chat", cwd=trained)
    assert chat.returncode == 0 and plain.returncode == 0, chat.stderr + plain.stderr
    assert json.loads(chat.stdout)["chat"] is True and "chat" not in json.loads(plain.stdout)
    streamed = gptcli(*args, "--seed", "1", cwd=trained)
    assert not streamed.stdout.startswith("Count to 3.")  # a chat reply, not a continuation
    proc = gptcli_inproc("sample", "-c", "runs/mini", "--chat", "--prompt", "hi", cwd=trained)
    assert_one_line_error(proc, "chat template")


def test_lora_stores_adapters_with_base_reference_and_merges(trained):
    import hashlib

    from safetensors import safe_open

    train_file, dev_file = _sst(trained)
    extra = "finetune:\n  lora: {rank: 4, alpha: 8, targets: [qkv, proj]}\n"
    proc = _finetune(trained, "sst-lora", "single", train_file, dev_file, 4, SST_LABELS, extra)
    assert proc.returncode == 0, proc.stderr
    assert "trained" in proc.stderr  # "x M parameters (y M trained)"
    ckpt = trained / "runs" / "sst-lora" / "checkpoints" / "step-0000004"
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == {
        *(f"blocks.{i}.attn.{m}.lora_{ab}" for i in (0, 1) for m in ("qkv", "proj") for ab in "AB"),
        "cls_head.weight",
        "cls_head.bias",
        "wte.weight.extra_rows",
    }
    base = trained / "runs" / "mini" / "checkpoints" / "step-0000012"
    lora = json.loads((ckpt / "config.json").read_text())["lora"]
    assert lora["base"]["path"] == str(base.resolve())
    assert (
        lora["base"]["sha256"]
        == hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    )

    from gptcli import load

    merged = load.load(ckpt).weights
    base_w = load.load(base).weights
    assert merged["blocks.0.mlp.up.weight"].equal(base_w["blocks.0.mlp.up.weight"])  # not a target
    assert merged["wte.weight"][:400].equal(base_w["wte.weight"])
    assert not merged["blocks.0.attn.qkv.weight"].equal(base_w["blocks.0.attn.qkv.weight"])

    prompt = ("sample", "--prompt", "a fine film", "--json")
    direct = gptcli(*prompt, "-c", str(ckpt), cwd=trained)
    assert direct.returncode == 0, direct.stderr
    out = gptcli("export", str(ckpt), "--format", "gptcli", "--out", "merged-sst", cwd=trained)
    assert out.returncode == 0, out.stderr
    exported = gptcli(*prompt, "-c", "merged-sst", cwd=trained)
    assert json.loads(exported.stdout)["probs"] == json.loads(direct.stdout)["probs"]

    # resume the adapter run: the base stays frozen, the adapters continue
    proc = _finetune(trained, "sst-lora", "single", train_file, dev_file, 6, SST_LABELS, extra)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr and json.loads(proc.stdout)["step"] == 6


def test_lora_refuses_a_changed_or_missing_base(trained, tmp_path, gptcli_inproc):
    import shutil

    train_file, dev_file = _sst(trained)
    work = tmp_path / "w"
    shutil.copytree(trained / "runs" / "mini", work / "runs" / "mini")
    extra = "finetune:\n  lora: {rank: 2}\n"
    proc = _finetune(work, "l", "single", train_file, dev_file, 2, SST_LABELS, extra)
    assert proc.returncode == 0, proc.stderr
    base = work / "runs" / "mini" / "checkpoints" / "step-0000012" / "model.safetensors"
    data = bytearray(base.read_bytes())
    data[-1] ^= 1
    base.write_bytes(bytes(data))
    proc = gptcli_inproc("sample", "-c", "runs/l", "--prompt", "hi", cwd=work)
    assert_one_line_error(proc, "changed since the adapters were trained")
    shutil.rmtree(work / "runs" / "mini")
    proc = gptcli_inproc("sample", "-c", "runs/l", "--prompt", "hi", cwd=work)
    assert_one_line_error(proc, "base checkpoint", "missing")


def test_finetune_resume_refuses_a_different_init_tokenizer(trained, tmp_path, gptcli_inproc):
    import shutil

    train_file, dev_file = _sst(trained)
    work = tmp_path / "w"
    shutil.copytree(trained / "runs" / "mini", work / "runs" / "mini")
    proc = _finetune(work, "r", "single", train_file, dev_file, 2, SST_LABELS)
    assert proc.returncode == 0, proc.stderr
    from tokenizers import Tokenizer

    for ckpt in (work / "runs" / "mini" / "checkpoints").iterdir():
        tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        tok.add_special_tokens(["<|odd|>"])  # init now has another tokenizer than the run
        tok.save(str(ckpt / "tokenizer.json"))
    proc = _finetune(
        work, "r", "single", train_file, dev_file, 4, SST_LABELS, "", "--quiet", run=gptcli_inproc
    )
    assert_one_line_error(proc, "different tokenizer")


def test_batch_order_is_a_seeded_permutation_in_length_buckets():
    from gptcli.tasks.base import LengthOrder

    lengths = [(i * 7) % 13 + 1 for i in range(24)]
    order = LengthOrder(lengths, batch_size=4, seed=5, bucket=3)
    batches = [order.indices(i) for i in range(12)]  # 48 positions = two epochs
    seen = sorted(i for b in batches for i in b)
    assert seen == sorted(list(range(24)) * 2)  # every example once per epoch
    for chunk in range(4):  # within a chunk, batches hold examples of neighbouring lengths
        group = batches[chunk * 3 : chunk * 3 + 3]
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in group)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    fresh = LengthOrder(lengths, batch_size=4, seed=5, bucket=3)  # a resumed run: same batches
    assert [fresh.indices(i) for i in (7, 2, 11)] == [batches[7], batches[2], batches[11]]


# --------------------------------------------------------------------------- shipped recipes


def _recipe_data(folder, name):
    """Small stand-ins for each finetune recipe's data (the real files are named in it)."""
    if name in ("sst2",):
        return _sst(folder, 40, 10)
    if name in ("rte", "similarity"):
        lines = (SHARED_DATA / "classify" / "rte_train.jsonl").read_text().splitlines()
        (folder / "rte_small.jsonl").write_text("\n".join(lines[:30]) + "\n")
        return folder / "rte_small.jsonl", folder / "rte_small.jsonl"
    if name == "story-choice":
        import runpy

        story = SHARED_DATA / "tinystories" / "TinyStories_all_data-data00.head.txt"
        script = runpy.run_path(str(REPO / "examples" / "story_cloze.py"))
        script["main"]([str(story)], str(folder / "cloze"))
        return folder / "cloze_train.jsonl", folder / "cloze_dev.jsonl"
    instruct = SHARED_DATA / "instruct"
    return instruct / "self_instruct_seed.jsonl", instruct / "self_instruct_user_oriented.jsonl"


@pytest.mark.parametrize("name", ["sst2", "rte", "similarity", "story-choice", "sft"])
def test_shipped_finetune_recipes_run(trained, name):
    path = REPO / "recipes" / "finetune" / f"{name}.yaml"
    text = path.read_text()
    start = re.search(r"Starts from: (recipes/\S+\.yaml)", text)
    assert start and (REPO / start.group(1)).is_file()  # the pretraining recipe it builds on
    train_file, dev_file = _recipe_data(trained, name)
    proc = gptcli(
        "finetune",
        str(path),
        "--set",
        "init=runs/mini",
        "--set",
        f"name=recipe-{name}",
        "--set",
        f"data.source={train_file}",
        "--set",
        f"data.dev={dev_file}",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.eval_batches=2",
        "--quiet",
        "--json",
        cwd=trained,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 2


def test_story_cloze_example_builds_a_choice_task(tmp_path):
    import runpy

    story = SHARED_DATA / "tinystories" / "TinyStories_all_data-data00.head.txt"
    runpy.run_path(str(REPO / "examples" / "story_cloze.py"))["main"](
        [str(story)], str(tmp_path / "c")
    )
    rows = [json.loads(ln) for ln in (tmp_path / "c_train.jsonl").read_text().splitlines()]
    assert len(rows) > 400
    for row in rows[:50]:
        assert len(row["choices"]) == 4 and 0 <= row["label"] < 4
        assert row["choices"][row["label"]] not in row["context"]


def test_padded_examples_do_not_attend_across_rows():
    """A batch of padded examples gives each example exactly what it gets alone."""
    import torch

    from gptcli.model import GPT
    from gptcli.recipe import ModelConfig
    from gptcli.tasks.base import pad

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)).eval()
    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    x, y = pad(rows, [r[1:] + [-1] for r in rows])
    assert y[0].tolist() == [2, 3, -1, -1, -1, -1]  # no loss on padding
    with torch.no_grad():
        together = model.hidden(x)
        for i, row in enumerate(rows):
            alone = model.hidden(torch.tensor([row]))[0]
            assert torch.allclose(together[i, : len(row)], alone, atol=1e-5)


def test_lora_works_for_lm_and_sft_tasks(trained):
    from safetensors import safe_open

    lm = FINETUNE.format(
        source=SHARED_DATA / "tinystories" / "TinyStories_all_data-data00.head.txt"
    )
    lm = lm.replace("mini-ft", "lm-lora") + "finetune:\n  lora: {rank: 2, targets: [qkv]}\n"
    records = [{"prompt": f"Count to {i}.", "response": f"{i} {i + 1}"} for i in range(20)]
    sft = SFT.format(name="sft-lora", source=_write_jsonl(trained / "sft-l.jsonl", records))
    sft += "finetune:\n  lora: {rank: 2}\n"
    for name, text in (("lm-lora", lm), ("sft-lora", sft)):
        proc = gptcli(
            "finetune", str(write_recipe(trained, text, f"{name}.yaml")), "--json", cwd=trained
        )
        assert proc.returncode == 0, proc.stderr
        ckpt = json.loads(proc.stdout)["checkpoint"]
        with safe_open(str(trained / ckpt / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert keys and all(".lora_" in k or k.endswith("extra_rows") for k in keys)
        proc = gptcli(
            "sample", "-c", ckpt, "--prompt", "Count to 2.", "--max-new-tokens", "3", cwd=trained
        )
        assert proc.returncode == 0, proc.stderr


def test_finetune_under_torchrun_syncs_gradients(trained):
    """Two gloo ranks with grad_accum 2 take the batches one process takes with grad_accum 4
    (index (step x 2 + micro) x 2 + rank), so with gradients averaged by DDP (and its all-reduce
    skipped on the first micro-batch) both must end with the same weights.
    A classifier's loss reads model.hidden and its head, not model.forward: only a step that
    DDP wraps whole syncs those gradients."""
    from safetensors.torch import load_file

    train_file, dev_file = _sst(trained)
    runs = {}
    for name, accum in (("sst-ddp", 2), ("sst-accum", 4)):
        # fp32: dtype auto decides by a timed probe, cached per thread count, and the ranks run
        # one thread each: near a tie the two runs could pick different precisions
        text = CLASSIFY.format(
            name=name, format="single", source=train_file, dev=dev_file, steps=4,
            task_extra=SST_LABELS, extra=f"  grad_accum: {accum}\n  dtype: fp32\n",
        )  # fmt: skip
        recipe = write_recipe(trained, text, f"{name}.yaml")
        if name == "sst-ddp":
            proc = torchrun("finetune", str(recipe), "--json", "--quiet", cwd=trained)
        else:
            proc = gptcli("finetune", str(recipe), "--json", "--quiet", cwd=trained)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(proc.stdout.splitlines()) == 1  # one summary, from rank 0
        summary = json.loads(proc.stdout)
        assert summary["step"] == 4
        runs[name] = load_file(trained / summary["checkpoint"] / "model.safetensors")
    ddp, accum = runs["sst-ddp"], runs["sst-accum"]
    assert ddp.keys() == accum.keys()
    for key in ddp:
        assert torch.allclose(ddp[key], accum[key], atol=1e-5), key


def test_classifier_without_lm_loss_under_torchrun_freezes_an_untied_unembedding(tmp_path):
    """No LM loss leaves an untied unembedding without a gradient: it is frozen (unchanged),
    so DDP, which fails on a trainable parameter that gets no gradient, trains the rest."""
    from safetensors.torch import load_file

    pre = gptcli(
        "pretrain", str(write_recipe(tmp_path)), "--quiet", "--set", "model.tie_embeddings=false",
        "--set", "train.max_steps=2", cwd=tmp_path,
    )  # fmt: skip
    assert pre.returncode == 0, pre.stderr
    train_file, dev_file = _sst(tmp_path, 48, 8)
    text = CLASSIFY.format(
        name="sst-nolm", format="single", source=train_file, dev=dev_file, steps=3,
        task_extra=SST_LABELS + "  lm_weight: 0\n", extra="",
    )  # fmt: skip
    recipe = write_recipe(tmp_path, text, "sst-nolm.yaml")
    proc = torchrun("finetune", str(recipe), "--json", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = load_file(tmp_path / "runs/mini/checkpoints/step-0000002/model.safetensors")
    after = load_file(tmp_path / json.loads(proc.stdout)["checkpoint"] / "model.safetensors")
    assert torch.equal(after["lm_head.weight"][: before["lm_head.weight"].shape[0]],
                       before["lm_head.weight"])  # fmt: skip
    assert not torch.equal(after["blocks.0.mlp.up.weight"], before["blocks.0.mlp.up.weight"])


@pytest.mark.parametrize("task", ["classify-lora", "sft"])
def test_finetune_under_fsdp_trains_as_one_process(trained, task):
    """FSDP on 2 ranks takes the batches one process takes with twice the grad_accum, so both
    end with the same weights. A classifier reads model.hidden and its head outside
    model.forward; LoRA trains adapters beside frozen base weights in the same sharded block."""
    from safetensors.torch import load_file

    if task == "sft":
        records = [{"prompt": f"Count to {i}.", "response": f"{i} {i + 1}"} for i in range(20)]
        source = _write_jsonl(trained / "sft-fsdp.jsonl", records)
        text = SFT.format(name="{name}", source=source)
    else:
        train_file, dev_file = _sst(trained, 48, 8)
        lora = "finetune:\n  lora: {{rank: 2, targets: [qkv, proj]}}\n"
        text = CLASSIFY.format(
            name="{name}", format="single", source=train_file, dev=dev_file, steps=3,
            task_extra=SST_LABELS, extra=lora,
        )  # fmt: skip
    fp32 = ("--json", "--quiet", "--set", "train.dtype=fp32")
    weights = {}
    for name, accum in (("fsdp", 1), ("single", 2)):
        recipe = write_recipe(trained, text.format(name=f"{task}-{name}"), f"{task}-{name}.yaml")
        args = ("finetune", str(recipe), *fp32, "--set", f"train.grad_accum={accum}")
        if name == "fsdp":
            proc = torchrun(*args, "--set", "train.parallel=fsdp", cwd=trained)
        else:
            proc = gptcli(*args, cwd=trained)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ckpt = trained / json.loads(proc.stdout)["checkpoint"]
        assert (ckpt / "optim-index.json").is_file() == (name == "fsdp")  # sharded optimizer
        weights[name] = load_file(ckpt / "model.safetensors")
    sharded, single = weights["fsdp"], weights["single"]
    assert sharded.keys() == single.keys()
    if task == "classify-lora":
        assert "cls_head.weight" in sharded and "blocks.0.attn.qkv.lora_A" in sharded
    for key in sharded:
        assert torch.allclose(sharded[key], single[key], atol=1e-5), key


def test_every_task_answers_what_the_trainer_asks():
    """LMTask, SFTTask and ClassifyTask each give base.Task's methods, by the same arguments."""
    from gptcli.tasks.base import Task
    from gptcli.tasks.classify import ClassifyTask
    from gptcli.tasks.lm import LMTask
    from gptcli.tasks.sft import SFTTask

    asked = ("batch", "loss", "evaluate", "summary")
    for cls in (LMTask, SFTTask, ClassifyTask):
        for name in asked:
            wanted = list(inspect.signature(getattr(Task, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == wanted, (cls, name)
    assert "checkpoint_info" in Task.__annotations__
    assert isinstance(LMTask.checkpoint_info, dict) and isinstance(SFTTask.checkpoint_info, dict)
