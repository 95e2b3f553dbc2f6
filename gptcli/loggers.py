"""Where training metrics go: metrics.jsonl (the source of truth), the terminal, and the
trackers `train.loggers` names (TensorBoard, Weights & Biases, MLflow).

Each logger takes the same records (step, loss, lr, tokens_per_s, tokens_seen, elapsed_s,
and val_loss, val_bpb, mfu or a task's metrics where known); a tracker plugs in as another
class with log(record) and close(exit_code) (0, or 130/143 after a signal, 1 after a failure:
trackers record how the run ended), opened by open_loggers. Trackers are optional
extras, imported only when a recipe names them; their output goes to stderr or their own
files, never to stdout. A resumed run continues its tracker runs: their ids are kept in
trackers.json in the run folder, and no step is logged twice.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import string
import time
from pathlib import Path

from gptcli import console
from gptcli.console import UserError
from gptcli.files import read_json, typed_fields, write_atomic
from gptcli.recipe import LOGGERS, Recipe, dump, flat, to_dict

METRICS_FILE = "metrics.jsonl"
TRACKER_IDS_FILE = "trackers.json"


class JsonlLogger:
    """One JSON object per line, appended and flushed as each record comes."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE
        with console.writing(self.path):
            self.file = open(self.path, "a")

    def log(self, record: dict) -> None:
        with console.writing(self.path):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self, exit_code: int = 0) -> None:
        self.file.close()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records logged after the checkpoint a run resumes from: they will be redone. A run
    that starts from step 0 (killed before its first checkpoint) keeps none of them."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    lines = path.read_text().splitlines() if step else []
    keep = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
    write_atomic(path, "".join(ln + "\n" for ln in keep).encode())


class ConsoleLogger:
    """A line per record on stderr when no progress bar shows the same figures."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps

    def log(self, record: dict) -> None:
        if console.progress_enabled():
            return
        val = "".join(
            f" | {name} {record[k]:.3f}"
            for k, name in (("val_loss", "val"), ("val_accuracy", "accuracy"))
            if k in record
        )
        console.info(
            f"step {record['step']}/{self.max_steps} | loss {record['loss']:.3f}{val} "
            f"| lr {record['lr']:.2e} | {rate_text(record)}"
        )

    def close(self, exit_code: int = 0) -> None:
        pass


def rate_text(record: dict) -> str:
    """'12,345 tok/s mfu 3.1%' for the progress bar and the log line."""
    mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
    return f"{record['tokens_per_s']:,.0f} tok/s{mfu}"


# --------------------------------------------------------------------------- trackers


def close_all(opened: list, exit_code: int) -> None:
    """Close every logger, even when one fails: a tracker that cannot finish (its server gone)
    must not hide the training's own outcome or leave the others open."""
    for logger in opened:
        try:
            logger.close(exit_code)
        except Exception as e:  # noqa: BLE001 - reported, then the next logger closes
            console.warn(f"{type(logger).__name__}: closing failed: {e}")


def sqlite_default(recipe: Recipe) -> bool:
    """True when MLflow uses its default store here, a sqlite file (needs sqlalchemy, alembic)."""
    uri = recipe.trackers.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri == "" or uri.startswith("sqlite:")


def check_installed(recipe: Recipe) -> None:
    """Before any work: each tracker train.loggers names has its extra installed."""
    for name in dict.fromkeys(recipe.train.loggers):
        modules = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "mlflow": ["mlflow"]}
        needed = modules.get(name, [])
        if name == "mlflow" and sqlite_default(recipe):
            needed = [*needed, "sqlalchemy", "alembic"]
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"train.loggers names {name}, which needs the {missing[0]} package: "
                f"pip install 'gptcli[{name}]'"
            )


def open_loggers(recipe: Recipe, run_dir: Path, start_step: int) -> list:
    """metrics.jsonl and the recipe's trackers (rank 0 only); none when nothing is left to
    train. start_step: the checkpoint a resumed run starts from (0 for a new run)."""
    opened: list = [JsonlLogger(run_dir)]
    if start_step >= recipe.train.max_steps:
        return opened
    trackers = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}
    try:
        for name in dict.fromkeys(recipe.train.loggers):
            if name in trackers:
                opened.append(trackers[name](recipe, run_dir, start_step))
    except BaseException:
        close_all(opened, 1)
        raise
    return opened


def tracker_ids(run_dir: Path) -> dict[str, str]:
    """The run ids of the run folder's tracker runs, by tracker name."""
    path = run_dir / TRACKER_IDS_FILE
    if not path.is_file():
        return {}
    try:
        ids = read_json(path)
    except UserError as e:
        raise UserError(f"{e} (delete it for new tracker runs)") from None
    known = set(LOGGERS) - {"jsonl"}
    unknown = sorted(set(ids) - known)
    if unknown:
        raise UserError(
            f"{path}: unknown key {unknown[0]!r} (trackers: {', '.join(sorted(known))})"
        )
    return typed_fields(path, ids, dict.fromkeys(known, str))


def save_tracker_id(run_dir: Path, name: str, run_id: str) -> None:
    ids = {**tracker_ids(run_dir), name: run_id}
    write_atomic(run_dir / TRACKER_IDS_FILE, (json.dumps(ids, indent=2) + "\n").encode())


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers, by name, without the step (trackers take it apart)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardLogger:
    """Event files through torch's SummaryWriter; a resumed run purges the steps after its
    checkpoint (purge_step), so TensorBoard shows each step once."""

    def __init__(self, recipe: Recipe, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(recipe.trackers.tensorboard.log_dir or run_dir / "tensorboard")
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1)
        text = "".join(f"    {line}\n" for line in dump(recipe).splitlines())  # a code block
        self.writer.add_text("recipe", text, global_step=start_step)
        console.info(f"tensorboard: logging to {log_dir} (tensorboard --logdir {log_dir})")

    def log(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self, exit_code: int = 0) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run, resumed by the id kept in the run folder (resume="allow").
    Quiet: W&B neither prints nor wraps the terminal (console="off")."""

    def __init__(self, recipe: Recipe, run_dir: Path, start_step: int) -> None:
        import wandb

        s = recipe.trackers.wandb
        run_id = tracker_ids(run_dir).get("wandb") or new_wandb_id()
        save_tracker_id(run_dir, "wandb", run_id)
        try:
            self.run = wandb.init(
                project=s.project or os.environ.get("WANDB_PROJECT") or "gptcli",
                entity=s.entity or None,
                mode=s.mode or None,
                id=run_id,
                resume="allow",
                name=run_dir.name,
                dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
                config=to_dict(recipe),
                settings=wandb.Settings(silent=True, console="off"),
            )
        except wandb.errors.Error as e:
            raise UserError(
                f"wandb could not start a run: {' '.join(str(e).split())} (`wandb login`, or "
                "trackers.wandb.mode=offline to log without a network)"
            ) from None
        if self.run.offline:
            where = f"offline in {Path(self.run.dir).parent} (wandb sync uploads it)"
        else:
            where = self.run.url or "(disabled: nothing is logged)"
        console.info(f"wandb: run {run_id} {where}")

    def log(self, record: dict) -> None:
        if record["step"] >= self.run.starting_step:  # an online resume knows its last step
            self.run.log(scalars(record), step=record["step"])

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def new_wandb_id() -> str:
    """Eight lowercase letters and digits, the form of W&B's own run ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class MlflowLogger:
    """An MLflow run (default store: sqlite in the run folder), resumed by the id kept in the
    run folder; steps the run already holds are not logged again (its history is append-only)."""

    def __init__(self, recipe: Recipe, run_dir: Path, start_step: int) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # database set-up notices; warnings still show
            logging.getLogger(name).setLevel(logging.WARNING)

        s = recipe.trackers.mlflow
        uri = s.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        # the default store keeps everything in the run folder (artifacts too, if any)
        self.artifacts = None if uri else (run_dir / "mlflow-artifacts").resolve().as_uri()
        uri = uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.failed, self.metric = MlflowException, Metric
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id, self.done = self.open_run(run_dir, s.experiment)
            params = self.client.get_run(self.run_id).data.params
            new = [Param(k, str(v)[:6000]) for k, v in flat(recipe).items() if k not in params]
            for i in range(0, len(new), 100):  # MLflow takes 100 params a batch
                self.client.log_batch(self.run_id, params=new[i : i + 100])
        except MlflowException as e:
            message = " ".join(str(e.message).split())
            raise UserError(f"mlflow: {message} (tracking URI {uri})") from None
        console.info(f"mlflow: run {self.run_id} in {uri} (mlflow ui --backend-store-uri {uri})")
        self.warned = False

    def open_run(self, run_dir: Path, experiment: str) -> tuple[str, int]:
        """The run folder's MLflow run (a new one if the store lacks it) and its last step."""
        run_id = tracker_ids(run_dir).get("mlflow")
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
                history = self.client.get_metric_history(run_id, "loss")
                return run_id, max((m.step for m in history), default=0)
            except self.failed:
                console.warn(f"mlflow: run {run_id} is not in this store; starting a new run")
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "gptcli"
        found = self.client.get_experiment_by_name(name)
        if found:
            exp_id = found.experiment_id
        else:
            exp_id = self.client.create_experiment(name, artifact_location=self.artifacts)
        run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
        save_tracker_id(run_dir, "mlflow", run_id)
        return run_id, 0

    def log(self, record: dict) -> None:
        step = record["step"]
        if step <= self.done:
            return
        now = int(time.time() * 1000)
        metrics = [self.metric(k, v, now, step) for k, v in scalars(record).items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except self.failed as e:
            if not self.warned:  # metrics.jsonl still has every record
                console.warn(f"mlflow: logging failed ({e.message}); training goes on")
                self.warned = True

    def close(self, exit_code: int = 0) -> None:
        status = {0: "FINISHED", 130: "KILLED", 143: "KILLED"}.get(exit_code, "FAILED")
        self.client.set_terminated(self.run_id, status=status)
