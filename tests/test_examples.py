"""Every example script runs, against the real `gptcli` on PATH."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """Runs ci_smoke.sh, which the other examples then use (runs/smoke)."""
    folder = tmp_path_factory.mktemp("examples")
    proc = run("ci_smoke.sh", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "smoke ok: step 30" in proc.stdout
    return folder


def run(script, *args, cwd, input=None):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    return subprocess.run(
        ["bash", str(EXAMPLES / script), *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.sh")} == {
        "ci_smoke.sh",
        "prompts_from_file.sh",
        "count_tokens.sh",
    }


def test_prompts_from_file(smoke_dir):
    (smoke_dir / "prompts.txt").write_text("Once upon a time\n\nOne day\n")
    proc = run("prompts_from_file.sh", "runs/smoke", "prompts.txt", cwd=smoke_dir)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == ["Once upon a time", "One day"]
    assert all(int(r[1]) > 3 and r[2].startswith(r[0]) for r in rows)


def test_count_tokens(smoke_dir):
    proc = run("count_tokens.sh", "runs/smoke", cwd=smoke_dir, input="Once upon a time\nThe end\n")
    assert proc.returncode == 0, proc.stderr
    assert 4 <= int(proc.stdout) <= 16
