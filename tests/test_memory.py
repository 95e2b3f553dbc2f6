"""Activation checkpointing and the memory report: same losses, fewer saved bytes, and an
estimate that matches what the model really saves for backward."""

import json
import resource
import subprocess
import sys

import pytest
import torch
from conftest import TORCHRUN_ENV, gptcli, run_env, torchrun_command, write_recipe

from gptcli import kernels, memory, recipe
from gptcli.console import UserError
from gptcli.model import GPT
from gptcli.optim import build_optimizers
from gptcli.recipe import ModelConfig, TrainConfig

VARIANTS = {
    "gpt2": {},
    "gelu-erf": {"mlp": "gelu_erf"},
    "llama": {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
    "relu2-qk-norm": {"positions": "rope", "mlp": "relu2", "qk_norm": True},
    "dropout": {"dropout": 0.1},
}
MODES = [False, "selective", True]
B, T = 4, 128


def losses(run) -> dict[int, float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def make(width: int = 128, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=width, block_size=T, vocab_size=512, **kw)
    return GPT(cfg).train()


def saved_bytes(model: GPT, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages saved for backward that are not the model's own."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, y)[1]
    loss.backward()
    return sum(saved.values())


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 512, (B, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


@pytest.mark.parametrize("variant", ["gpt2", "dropout"])
def test_checkpointing_keeps_the_losses(variant):
    t = TrainConfig(lr=1e-3)
    runs = {}
    for mode in MODES:
        model = make(width=64, **VARIANTS[variant])
        model.activation_checkpointing = mode
        (opt,) = build_optimizers(model, t, torch.device("cpu"))
        torch.manual_seed(1)  # the same dropout masks in every mode
        losses = []
        for step in range(3):
            _, loss = model(*batch(step))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        runs[mode] = losses
    for mode in MODES[1:]:
        assert runs[mode] == pytest.approx(runs[False], rel=1e-6), mode


@pytest.mark.parametrize("chunked", [False, True], ids=["plain-loss", "chunked-loss"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_activation_estimate_matches_the_saved_tensors(variant, chunked, monkeypatch):
    if chunked:
        monkeypatch.setattr(kernels, "CHUNKED_LOSS_MIN", 1)  # the chunked kernel's savings
    model = make(**VARIANTS[variant])
    counted = {}
    for mode in MODES:
        model.activation_checkpointing = mode
        counted[mode] = saved_bytes(model, *batch())
        estimate = memory.activation_bytes(model.cfg, B, mode)
        assert estimate == pytest.approx(counted[mode], rel=0.25), mode
    # every other block, then every block, keeps only its input
    assert counted[False] > 1.5 * counted["selective"] > 2 * counted[True]
    model.eval()  # evaluation never recomputes
    evaluated = saved_bytes(model, *batch())
    model.activation_checkpointing = False
    assert evaluated == saved_bytes(model, *batch())


def test_state_bytes_follow_the_optimizer():
    model = make()
    n = model.num_params()
    adamw = memory.estimate(model, TrainConfig(batch_size=B))
    assert adamw["parameters"] == adamw["gradients"] == 4 * n
    assert adamw["optimizer"] == 8 * n  # two fp32 moments per parameter
    muon = memory.estimate(model, TrainConfig(batch_size=B, optimizer="muon"))
    hidden = sum(
        p.numel() for name, p in model.named_parameters() if "blocks" in name and p.dim() == 2
    )
    assert muon["optimizer"] == 4 * hidden + 8 * (n - hidden)  # one momentum per matrix
    ddp = memory.estimate(model, TrainConfig(batch_size=B, activation_checkpointing=True), world=2)
    assert ddp["ddp_buckets"] == 4 * n and ddp["activation_checkpointing"] == "every_block"
    assert ddp["total"] == 20 * n + ddp["activations"]["every_block"] + ddp["recompute"]


def test_fsdp_divides_the_training_state_by_the_ranks():
    """Sharded, each rank holds half of the parameters, gradients and AdamW moments; it
    gathers the embeddings and two blocks whole; activations stay per rank."""
    model = make()
    n, t = model.num_params(), TrainConfig(batch_size=B)
    whole = memory.estimate(model, t)
    sharded = memory.estimate(model, t, world=2, sharded=True)
    assert n % 2 == 0 and "ddp_buckets" not in sharded
    assert (sharded["parameters"], sharded["gradients"], sharded["optimizer"]) == (
        2 * n,
        2 * n,
        4 * n,
    )
    assert sharded["activations"] == whole["activations"]
    root = model.wte.weight.numel() + model.wpe.weight.numel() + 2 * model.cfg.n_embd  # ln_f
    block = sum(p.numel() for p in model.blocks[0].parameters())
    assert sharded["gathered"] == 4 * (root + 2 * block)
    assert sharded["total"] == 8 * n + sharded["gathered"] + sharded["activations"]["off"]
    assert "per rank (sharded over 2 ranks)" in memory.summary(sharded)


def test_recipe_reads_true_false_and_selective():
    for value in (True, False, "selective"):
        r = recipe.from_dict({"train": {"activation_checkpointing": value}})
        assert r.train.activation_checkpointing == value
    r = recipe.from_dict({}, ["train.activation_checkpointing=true"])
    assert r.train.activation_checkpointing is True
    for bad in (1, 0, "yes", "every"):
        with pytest.raises(UserError, match="one of false, true, 'selective'"):
            recipe.from_dict({"train": {"activation_checkpointing": bad}})


def test_ddp_run_with_checkpointing_reports_memory_per_rank(tmp_path):
    """torchrun with every block checkpointed trains with the losses of one process without
    checkpointing (and twice the grad_accum), logs the report before step 1 and records it
    where `inspect RUN` shows it."""
    recipe_path = write_recipe(tmp_path)
    exact = ["train.dtype=fp32", "train.max_steps=3", "train.eval_every=0", "train.log_every=1"]
    sets = ["train.activation_checkpointing=true", *exact]
    proc = subprocess.run(
        [*torchrun_command(2), "pretrain", str(recipe_path)]
        + [arg for s in sets for arg in ("--set", s)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=run_env(**TORCHRUN_ENV),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "memory per rank (estimate)" in ln]
    assert len(lines) == 1 and "with checkpointing every block" in lines[0], proc.stderr
    report = json.loads((tmp_path / "runs" / "mini" / memory.MEMORY_FILE).read_text())
    assert report["ranks"] == 2 and report["activation_checkpointing"] == "every_block"
    assert report["ddp_buckets"] == report["gradients"]
    shown = gptcli("inspect", "runs/mini", cwd=tmp_path)
    assert "activations, checkpointing every block (this run)" in shown.stdout, shown.stdout
    alone = tmp_path / "alone"
    alone.mkdir()
    single = gptcli(
        "pretrain", str(recipe_path), "--set", "train.grad_accum=2",
        *[arg for s in exact for arg in ("--set", s)], cwd=alone,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    ddp, plain = (losses(folder / "runs" / "mini") for folder in (tmp_path, alone))
    assert sorted(ddp) == sorted(plain) == [1, 2, 3]
    for step, loss in plain.items():
        assert ddp[step] == pytest.approx(loss, rel=1e-5), step


# ----------------------------------------------------------------- refused before allocating

LIMIT = 8 << 30  # RLIMIT_AS of the commands below: their estimates are far over it anywhere


def gptcli_limited(*args: str, cwd, limit: int = LIMIT):
    """The real `gptcli ARGS` in a fresh interpreter under `ulimit -v` (RLIMIT_AS = limit)."""

    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=300,
        preexec_fn=limit_address_space,
    )


def test_an_oversized_pretrain_is_refused_before_the_model_is_built(tmp_path):
    """n_layer=10000 (24 GiB in bf16) and block_size=1e8 once allocated until the OOM killer
    came; now both stop with exit 2 and one line: the estimate, what is available, the
    remedies and the key that starts the run anyway. Nothing is built."""
    for override in ("model.n_layer=10000", "model.block_size=100000000"):
        proc = gptcli_limited("pretrain", "smoke", "--set", override, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith("error: training needs about "), proc.stderr
        for needle in ("MiB (estimate)", "is available on cpu", "activation_checkpointing"):
            assert needle in error, (needle, error)
        assert "train.batch_size" in error and "train.memory_check: false" in error
        assert "Traceback" not in proc.stderr and "building the model" not in proc.stderr
        assert not (tmp_path / "runs" / "smoke" / "checkpoints").exists()


def test_memory_check_false_starts_it_anyway_and_a_failed_allocation_is_one_line(tmp_path):
    """Opted out, the run is built: an allocation the machine cannot give (a 120 GB matrix
    under ulimit -v) is exit 1 with one line naming the remedy, not a traceback."""
    args = ["--set", "model.n_embd=100000", "--set", "train.memory_check=false"]
    proc = gptcli_limited("pretrain", "smoke", *args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "building the model" in proc.stderr
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: out of memory allocating "), proc.stderr
    assert "lower train.batch_size" in error and "activation_checkpointing" in error


def test_sample_refuses_rows_whose_kv_cache_cannot_fit(trained):
    """sample's own estimate (weights plus the KV cache of its rows) against ulimit -v."""
    proc = gptcli_limited(
        "sample", "-c", "runs/mini", "--prompt", "Once", "--num-samples", "1000000", cwd=trained
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sample needs about "), proc.stderr
    assert "(estimate)" in lines[0] and "is available on cpu" in lines[0]
    assert "fewer rows at a time (--num-samples)" in lines[0]
    assert lines[0].endswith("or --no-memory-check to try anyway")


HELLO = '[{"role": "user", "content": "Hi"}]\n'
# each command that runs a model, with what it does after loading one: (args, stdin, what it
# says then) -- serve and eval stop there on purpose (a negative queue, no such task)
AFTER_LOADING = {
    "sample": (["sample", "-c", "runs/mini", "-p", "Once", "--max-new-tokens", "2"], "", None),
    "chat": (["chat", "-c", "runs/mini", "--max-new-tokens", "2"], HELLO, None),
    "serve": (["serve", "-c", "runs/mini", "--max-queue", "-1"], "", "--max-queue must be"),
    "eval": (["eval", "runs/mini", "--tasks", "no_such_task"], "", "no_such_task"),
}


@pytest.mark.parametrize("command", list(AFTER_LOADING))
def test_no_memory_check_loads_what_the_estimate_refuses(
    trained, command, monkeypatch, gptcli_inproc
):
    """Over what is available, each command that runs a model refuses it in one line naming
    --no-memory-check; with that flag it loads the model and goes on."""
    args, stdin, then = AFTER_LOADING[command]
    monkeypatch.setattr(memory, "available_bytes", lambda device: memory.Available(1 << 10, "X"))
    refused = gptcli_inproc(*args, cwd=trained, input=stdin)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {command} needs about "), line
    assert line.endswith("or --no-memory-check to try anyway"), line
    loaded = gptcli_inproc(*args, "--no-memory-check", cwd=trained, input=stdin)
    if then is None:
        assert loaded.returncode == 0 and loaded.stdout, loaded.stderr
    else:
        assert loaded.returncode == 2 and then in loaded.stderr, loaded.stderr
        assert "needs about" not in loaded.stderr
    again = gptcli_inproc(*args, cwd=trained, input=stdin)  # the flag does not outlive its command
    assert again.returncode == 2 and "--no-memory-check" in again.stderr, again.stderr


def test_check_fits_names_the_estimate_the_limit_and_the_remedies(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: memory.Available(3 << 20, "X"))
    memory.check_fits(3 << 20, cpu, "training", ["fewer"])  # exactly what is there fits
    with pytest.raises(UserError) as refused:
        memory.check_fits((3 << 20) + 1, cpu, "training", ["fewer", "smaller"])
    assert str(refused.value) == (
        "training needs about 3.0 MiB (estimate) but 3.0 MiB is available on cpu (X): "
        "fewer; smaller"
    )
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)
    with pytest.raises(UserError, match=r"or set train\.memory_check: false to try anyway"):
        memory.check_training(cfg, TrainConfig(batch_size=8), cpu)
    memory.check_training(cfg, TrainConfig(batch_size=8, memory_check=False), cpu)
    with pytest.raises(UserError, match=r"sample needs .*fewer rows at a time \(--num-samples\)"):
        memory.check_inference(cfg, 1000, "auto", cpu, "sample", "--num-samples")
    memory.set_inference_check(False)  # --no-memory-check
    try:
        memory.check_inference(cfg, 1000, "auto", cpu, "sample", "--num-samples")
    finally:
        memory.set_inference_check(True)


def test_the_estimate_before_building_is_the_built_models(tmp_path):
    """One block on the meta device, counted n_layer times, gives the whole model's estimate,
    and inference counts its fp32 weights and the cache generate allocates."""
    for kw in VARIANTS.values():
        torch.manual_seed(0)
        cfg = ModelConfig(n_layer=3, n_head=4, n_embd=64, block_size=T, vocab_size=512, **kw)
        model = GPT(cfg)
        for t, world, sharded in [
            (TrainConfig(batch_size=B), 1, False),
            (TrainConfig(batch_size=B, optimizer="muon"), 2, False),
            (TrainConfig(batch_size=B, activation_checkpointing=True), 2, True),
        ]:
            before = memory.estimate_counts(
                cfg, memory.counts_before_building(cfg), t, None, world, sharded
            )
            assert before == memory.estimate(model, t, None, world, sharded)
        cache = model.new_cache(5)
        weights = 4 * model.num_params()
        cache_bytes = 2 * cache.k.numel() * 4
        assert memory.inference_bytes(cfg, 5, torch.float32) == weights + cache_bytes


def test_cgroup_limits_count_usage_less_reclaimable_cache(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000\n")
    (v2 / "memory.current").write_text("600000\n")
    (v2 / "memory.stat").write_text("anon 400000\ninactive_file 100000\n")
    room = memory.cgroup_folder_room(v2, "memory.max", "memory.current", "inactive_file")
    assert room == 1000000 - (600000 - 100000)
    (v2 / "memory.max").write_text("max\n")
    assert memory.cgroup_folder_room(v2, "memory.max", "memory.current", "inactive_file") is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(str(9223372036854771712))  # v1's "no limit"
    files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    assert memory.cgroup_folder_room(v1, *files) is None
    (v1 / "memory.limit_in_bytes").write_text("2000")
    (v1 / "memory.usage_in_bytes").write_text("500")
    (v1 / "memory.stat").write_text("cache 300\ntotal_inactive_file 200\n")
    assert memory.cgroup_folder_room(v1, *files) == 2000 - 300
    assert memory.cgroup_folder_room(tmp_path / "absent", *files) is None


def test_the_memory_report_reads_back_and_a_bad_one_is_refused(tmp_path):
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=280))
    report = memory.estimate(model, TrainConfig(batch_size=2), None)
    memory.save(tmp_path, report)
    assert memory.load(tmp_path) == report
    bad = [
        ("total", "1 GB", "'total'"),
        ("micro_batch", [2], "'micro_batch'"),
        ("activations", {"none": "x"}, "'activations'"),
        ("sharded", 1, "'sharded'"),
    ]
    for key, value, needle in bad:
        memory.save(tmp_path, {**report, key: value})
        with pytest.raises(UserError, match=needle):
            memory.load(tmp_path)
    memory.save(tmp_path, {k: v for k, v in report.items() if k != "total"})
    with pytest.raises(UserError, match="missing key 'total'"):
        memory.load(tmp_path)
