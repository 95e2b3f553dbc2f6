"""gptcli as users install it: an sdist that holds the recipes, a wheel built from that sdist,
installed with its dependencies into a fresh virtual environment and run from a folder outside
the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_one_line_error, run_env

# What a build reads: pyproject.toml names README.md and LICENSE; the recipes are in gptcli/.
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "gptcli")


def _run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _start(log: Path, *cmd: str | Path, **kwargs) -> subprocess.Popen:
    """Start CMD in the background, its stdout and stderr into LOG and LOG.err."""
    with open(log, "w") as out, open(f"{log}.err", "w") as err:  # the child keeps its copies
        return subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, **kwargs)


def _finish(proc: subprocess.Popen, log: Path) -> tuple[str, str]:
    """Wait for a _start()ed command; its (stdout, stderr), which must be a success."""
    proc.wait(timeout=300)
    out, err = log.read_text(), Path(f"{log}.err").read_text()
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _build(tmp: Path) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from a clean copy of the sources, the wheel from the sdist."""
    src, dist = tmp / "src", tmp / "dist"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy(REPO / name, src / name)
    # setuptools (the dev extra) builds here, without a network: no isolated build environment
    hook = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    sdist = dist / _run(sys.executable, "-c", hook, dist, cwd=src).stdout.split()[-1]
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, sdist)
    (wheel,) = dist.glob("gptcli-*.whl")
    return sdist, wheel


def wheel_cache() -> Path:
    """A folder of the dependencies' wheels, kept between runs: filled once per machine (or
    when a dependency changes), then every install reads it without an index."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "gptcli-tests" / "wheels"


def _install(tmp: Path) -> tuple[Path, Path]:
    """A new virtual environment with the wheel installed as `pip install` would, its
    dependencies resolved from the wheel's metadata: (sdist, the env's bin/). torch is pinned
    to the build installed here (a bare `torch` may resolve to a multi-GB CUDA build)."""
    env = tmp / "env"
    _run(sys.executable, "-m", "venv", "--without-pip", env)
    sdist, wheel = _build(tmp)
    cache, pin = wheel_cache(), f"torch=={torch.__version__}"
    cache.mkdir(parents=True, exist_ok=True)
    pip = (sys.executable, "-m", "pip")
    install = (*pip, "--python", env / "bin" / "python", "install", "-q", "--no-compile")
    local = (*install, "--no-index", "--find-links", cache, wheel, pin)
    if subprocess.run([str(c) for c in local], capture_output=True).returncode != 0:
        _run(*pip, "download", "-q", "-d", cache, wheel, pin)  # what the cache lacks
        for own in cache.glob("gptcli-*"):  # the wheel under test is never taken from there
            own.unlink()
        _run(*local)
    return sdist, env / "bin"


def _outside(bin_dir: Path, tmp: Path, *args: str, log: Path | None = None):
    """Run the installed gptcli in a folder outside the checkout, seeing none of its sources;
    with LOG, in the background (a Popen)."""
    env = run_env(GPTCLI_CACHE=str(tmp / "cache"))
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    cmd = [str(bin_dir / "gptcli"), *args]
    if log is not None:
        return _start(log, *cmd, cwd=work, env=env)
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=300)


def _bundled_names() -> set[str]:
    folder = REPO / "gptcli" / "recipes"
    paths = [p.relative_to(folder) for p in folder.rglob("*.yaml")]
    return {p.with_suffix("").as_posix() for p in paths if p.parts[0] != "eval"}


@pytest.mark.skipif(sys.platform == "win32", reason="the venv layout of Linux and macOS")
def test_installed_wheel_runs_bundled_recipes_outside_the_checkout(tmp_path):
    sdist, bin_dir = _install(tmp_path)
    with tarfile.open(sdist) as tar:
        packed = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames()}
    expected = {f"gptcli/recipes/{name}.yaml" for name in _bundled_names()}
    assert expected <= packed, expected - packed

    fewer = ("--set", "data.builtin_mb=0.1", "--set", "train.max_steps=4")
    fewer += ("--set", "train.eval_every=2", "--set", "train.eval_batches=1")
    smoke = _outside(
        bin_dir, tmp_path, "pretrain", "smoke", *fewer, "--json", log=tmp_path / "smoke"
    )
    listing = _outside(bin_dir, tmp_path, "inspect", "--recipes")
    assert listing.returncode == 0, listing.stderr
    assert {line.split()[0] for line in listing.stdout.splitlines()} == _bundled_names()
    proc = _outside(bin_dir, tmp_path, "finetune", "finetune/sst2")
    assert_one_line_error(proc, "--set data.source=PATH", "--set data.dev=PATH", "label")

    out, err = _finish(smoke, tmp_path / "smoke")
    assert '"step": 4' in out
    used = next(line for line in err.splitlines() if "is the bundled" in line)
    assert str(tmp_path / "env") in used and used.endswith("smoke.yaml")
    assert (tmp_path / "work" / "runs" / "smoke" / "checkpoints").is_dir()
