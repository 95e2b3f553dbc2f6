"""Trackers (train.loggers): TensorBoard, W&B (offline) and MLflow (sqlite) get the records of
metrics.jsonl, keep one run across a resume without repeating a step, close on a signal, log
from rank 0 alone under torchrun, and a missing extra stops a run before it starts."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import TORCHRUN_ENV, gptcli, run_env, torchrun_command, write_recipe

from gptcli import loggers
from gptcli.console import UserError
from gptcli.recipe import from_dict

ALL = "train.loggers=[jsonl,tensorboard,wandb,mlflow]"


def tracker_env(root: Path) -> dict[str, str]:
    """Offline W&B with its files under root; no tracker settings from the environment."""
    return {
        "WANDB_MODE": "offline",
        "WANDB__DISABLE_STATS": "true",  # no system-metrics sampler: tests share the CPU
        "WANDB__DISABLE_MACHINE_INFO": "true",
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_DATA_DIR": str(root / "wandb-data"),
        "WANDB_DIR": "",
        "WANDB_PROJECT": "",
        "MLFLOW_TRACKING_URI": "",
        "MLFLOW_EXPERIMENT_NAME": "",
    }


def jsonl(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def mlflow_run(run: Path) -> dict:
    """The one run in the run folder's MLflow store (its sqlite tables, read directly)."""
    with sqlite3.connect(run / "mlflow.db") as db:
        ((run_id, status),) = db.execute("SELECT run_uuid, status FROM runs").fetchall()
        params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
        rows = "SELECT step, value FROM metrics WHERE run_uuid = ? AND key = 'loss' ORDER BY step"
        loss = db.execute(rows, (run_id,)).fetchall()
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == run_id
    return {"status": status, "params": params, "loss": loss}


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline run's .wandb file (W&B's block-framed record log)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({i.key or i.nested_key[0]: json.loads(i.value_json) for i in items})
    return rows


def wandb_runs(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))


def losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in records]


def same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """The same steps with the same values (TensorBoard keeps float32)."""
    steps = [s for s, _ in got] == [s for s, _ in expected]
    return steps and [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_trackers_hold_the_jsonl_records_and_continue_after_a_signal(tmp_path):
    env = tracker_env(tmp_path)
    recipe = write_recipe(tmp_path)
    args = ["pretrain", str(recipe), "--set", ALL]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", *args],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(**env),
    )
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("step 9/12"):
            proc.send_signal(signal.SIGTERM)
            break
    lines.append(proc.stderr.read())
    assert proc.wait(timeout=120) == 143, "".join(lines)
    run = tmp_path / "runs" / "mini"
    first = jsonl(run)
    assert [r["step"] for r in first] == [1, 3, 6, 9]
    assert same(tensorboard_scalars(run, "loss"), losses(first))
    assert same(tensorboard_scalars(run, "val_loss"), [(6, first[2]["val_loss"])])
    mlflow = mlflow_run(run)
    assert mlflow["status"] == "KILLED"  # closed on the signal, not left running
    assert mlflow["params"]["model.n_embd"] == "32" and mlflow["params"]["seed"] == "1337"
    assert same(mlflow["loss"], losses(first))
    (wandb_file,) = wandb_runs(run)
    assert [(r["_step"], r["loss"]) for r in wandb_history(wandb_file)] == losses(first)

    # As if killed after logging step 9 but before saving: the resumed run redoes 7..12.
    for ckpt in (run / "checkpoints").iterdir():
        if ckpt.name != "step-0000006":
            shutil.rmtree(ckpt)
    proc = gptcli(*args, "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 12  # stdout is the summary alone
    records = jsonl(run)
    assert [r["step"] for r in records] == [1, 3, 6, 9, 12]
    assert same(tensorboard_scalars(run, "loss"), losses(records))  # purged, once
    mlflow = mlflow_run(run)  # the same run, continued
    assert mlflow["status"] == "FINISHED" and same(mlflow["loss"], losses(records))
    old, new = wandb_runs(run)
    assert old.name == new.name  # the stored run id again (offline runs merge on sync)
    assert [r["_step"] for r in wandb_history(new)] == [9, 12]


def test_task_metrics_reach_the_trackers_at_the_same_steps(trained):
    data = trained / "topics.jsonl"
    rows = [{"text": f"story number {i}", "label": i % 2} for i in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (
        "name: topics-tb\ninit: runs/mini\ntask: {kind: classify}\n"
        f"data: {{source: {data}}}\n"
        "train: {batch_size: 8, max_steps: 4, warmup_steps: 1, eval_every: 2, save_every: 0,"
        " log_every: 2, loggers: [jsonl, tensorboard]}\n"
    )
    recipe = write_recipe(trained, text, "topics-tb.yaml")
    proc = gptcli("finetune", str(recipe), "--quiet", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    run = trained / "runs" / "topics-tb"
    for key in ("val_accuracy", "val_macro_f1"):
        expected = [(r["step"], r[key]) for r in jsonl(run) if key in r]
        assert [s for s, _ in expected] == [2, 4]
        assert same(tensorboard_scalars(run, key), expected)


def test_torchrun_logs_one_tracker_run(tmp_path):
    recipe = write_recipe(tmp_path)
    env = tracker_env(tmp_path)
    sets = ["--set", ALL, "--set", "train.max_steps=3", "--set", "train.eval_every=3"]
    proc = subprocess.run(
        [*torchrun_command(), "pretrain", str(recipe), "--json", "--quiet", *sets],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=run_env(**TORCHRUN_ENV, **env),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 3
    run = tmp_path / "runs" / "mini"
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert len(wandb_runs(run)) == 1
    assert same(mlflow_run(run)["loss"], losses(jsonl(run)))  # exactly one run


HIDE_AND_RUN = """\
import contextlib, io, json, runpy, sys
results = []
for module, tracker in json.loads(sys.argv[1]):
    sys.modules[module] = None  # as if the extra were not installed
    sys.argv = ["gptcli", "pretrain", "mini.yaml", "--set", f"train.loggers=[jsonl,{tracker}]"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("gptcli", run_name="__main__")
        except SystemExit as e:
            results.append([e.code, err.getvalue()])
    del sys.modules[module]
print(json.dumps(results))
"""


def test_missing_extra_exits_2_before_training(tmp_path):
    write_recipe(tmp_path)
    cases = [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("alembic", "mlflow")]
    proc = subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, json.dumps(cases)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=run_env(),
    )
    results = json.loads(proc.stdout)  # the real entry point, in-process, once per case
    for (module, tracker), (code, stderr) in zip(cases, results, strict=True):
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert f"pip install 'gptcli[{tracker}]'" in stderr and module in stderr
    assert not (tmp_path / "runs").exists()  # nothing tokenized, nothing trained


def test_loggers_must_keep_jsonl_and_name_known_trackers():
    for value in (["tensorboard"], ["jsonl", "neptune"]):
        with pytest.raises(UserError, match="train.loggers"):
            from_dict({"train": {"loggers": value}})
    recipe = from_dict({"train": {"loggers": ["jsonl", "wandb"]}})
    assert recipe.train.loggers == ["jsonl", "wandb"]


def test_wandb_resumes_the_stored_run_id(tmp_path, monkeypatch):
    """W&B merges a resumed run into the stored one online only; it must be asked to."""
    calls = []

    class FakeRun:
        offline, url, dir, starting_step = False, "https://wandb.example/run", str(tmp_path), 0

        def log(self, metrics, step):
            calls.append(("log", step))

    fake = types.SimpleNamespace(
        init=lambda **kwargs: calls.append(kwargs) or FakeRun(),
        Settings=dict,
        errors=types.SimpleNamespace(Error=RuntimeError),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    (tmp_path / loggers.TRACKER_IDS_FILE).write_text('{"wandb": "abc123xy"}')
    recipe = from_dict({"train": {"loggers": ["jsonl", "wandb"]}})
    loggers.WandbLogger(recipe, tmp_path, 6)
    assert calls[0]["id"] == "abc123xy" and calls[0]["resume"] == "allow"
    assert calls[0]["settings"] == {"silent": True, "console": "off"}
    assert calls[0]["config"]["train"]["loggers"] == ["jsonl", "wandb"]


def test_tracker_ids_are_tracker_names_to_run_id_strings(tmp_path):
    path = tmp_path / loggers.TRACKER_IDS_FILE
    path.write_text('{"wandb": "abc123xy", "mlflow": "0f"}')
    assert loggers.tracker_ids(tmp_path) == {"wandb": "abc123xy", "mlflow": "0f"}
    for text, needle in [
        ('{"wandb": 5}', "'wandb' must be a string"),
        ('{"neptune": "x"}', "unknown key 'neptune'"),
        ('["abc"]', "expected a JSON object"),
        ("{", "not valid JSON"),
    ]:
        path.write_text(text)
        with pytest.raises(UserError, match=needle) as e:
            loggers.tracker_ids(tmp_path)
        assert str(path) in str(e.value)
