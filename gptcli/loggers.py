"""Where training metrics go: metrics.jsonl (the source of truth) and the terminal.

Each logger takes the same records (step, loss, lr, tokens_per_s, tokens_seen, elapsed_s,
and val_loss, val_bpb, mfu or a task's metrics where known); a tracker plugs in as another
class with log(record) and close().
"""

from __future__ import annotations

import json
from pathlib import Path

from gptcli import console
from gptcli.files import write_atomic

METRICS_FILE = "metrics.jsonl"


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

    def close(self) -> None:
        self.file.close()


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records logged after the checkpoint a run resumes from: they will be redone."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
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

    def close(self) -> None:
        pass


def rate_text(record: dict) -> str:
    """'12,345 tok/s mfu 3.1%' for the progress bar and the log line."""
    mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
    return f"{record['tokens_per_s']:,.0f} tok/s{mfu}"
