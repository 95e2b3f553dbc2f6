"""The `auto` rules: dtype and compile, their probes, and how a run keeps what they decided."""

import json
import shutil

import pytest
import torch
from conftest import COMPILE_DEVICES, TINY_RECIPE, write_recipe

from gptcli import autotune, checkpoint, device, kernels
from gptcli.autotune import CompiledRegions
from gptcli.device import CPU_PROBES
from gptcli.model import GPT, Block
from gptcli.recipe import ModelConfig, TrainConfig


def losses(run):
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def test_dtype_auto_on_cpu_follows_the_measured_bf16_speedup(monkeypatch):
    """auto never picks the slower dtype: bf16 where native and measured faster, else fp32."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert autotune.autocast_dtype(cpu, "auto", bf16_speedup=lambda: 1.4) == torch.bfloat16
    assert autotune.autocast_dtype(cpu, "auto", bf16_speedup=lambda: 0.7) is None
    assert autotune.autocast_dtype(cpu, "bf16", bf16_speedup=lambda: 0.7) == torch.bfloat16

    def no_probe():
        raise AssertionError("probed where the rule needs no measurement")

    assert autotune.autocast_dtype(cpu, "fp32", bf16_speedup=no_probe) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autotune.autocast_dtype(torch.device("cuda"), "auto", "x", no_probe) == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert autotune.autocast_dtype(cpu, "auto", bf16_speedup=no_probe) is None


def test_gpu_without_bf16_trains_in_fp32_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autotune.autocast_dtype(torch.device("cuda"), "auto") is None
    assert "no bf16" in capsys.readouterr().err


def test_auto_dtype_on_cpu_is_bf16_only_where_native_and_measured_faster():
    cpu = torch.device("cpu")
    faster = torch.bfloat16 if device.cpu_has_native_bf16() else None
    assert autotune.autocast_dtype(cpu, "auto", bf16_speedup=lambda: 2.0) == faster
    assert autotune.autocast_dtype(cpu, "auto", bf16_speedup=lambda: 0.5) is None
    assert autotune.autocast_dtype(cpu, "fp32") is None


def test_compile_auto_compiles_only_when_the_eager_time_left_repays_it(tmp_path, monkeypatch):
    from gptcli.autotune import PAYBACK, compile_pays, expected_compile_s

    enough = PAYBACK * 40.0
    assert compile_pays(1000, 2 * enough / 1000, 40.0)[0]
    wanted, why = compile_pays(1000, enough / 2000, 40.0)
    assert not wanted and "1000 steps left" in why and "under" in why
    assert not compile_pays(0, 10.0, 0.0)[0]
    # the expected compile does not grow with the layers (one block is compiled) until a run
    # here has measured this shape's
    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path))
    small, deep = (ModelConfig(n_layer=n, n_head=2, n_embd=16) for n in (2, 12))
    assert expected_compile_s(deep, 4, None)[0] == expected_compile_s(small, 4, None)[0]
    assert expected_compile_s(deep, 4, None)[1] == "estimated"
    device.write_probe(CPU_PROBES, autotune.compile_cost_key(deep, 4, None, "LMTask"), 3.5)
    assert expected_compile_s(deep, 4, None) == (3.5, "as measured here")
    assert expected_compile_s(deep, 4, torch.bfloat16)[1] == "estimated"


def test_timed_training_steps_time_each_dtype_and_leave_the_callers_seed_alone():
    """One timed step per dtype, with the optimizers of the train settings (inspect's probe)."""
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32)
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    cpu = torch.device("cpu")
    times = autotune.time_training_steps(cfg, 2, cpu, [None, torch.bfloat16], TrainConfig())
    assert len(times) == 2 and all(0 < t < float("inf") for t in times)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("device", COMPILE_DEVICES)
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_compiled_regions_give_eager_gradients_and_blocks_share_one_graph(device, amp, monkeypatch):
    # a wrong compiled gradient can hide: the model still learns a bigram table through the
    # embeddings when every gradient below the first norm is zero
    monkeypatch.setattr(kernels, "CHUNKED_LOSS_MIN", 1)  # compile the chunked loss too
    torch.manual_seed(0)
    kw = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}
    width = 256 if device == "cuda" else 64
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=width, block_size=64, vocab_size=256, **kw)
    model = GPT(cfg).to(device)
    model.activation_checkpointing = "selective"  # the first block recomputed, the second not
    x = torch.randint(0, 256, (4, 65), device=device)
    grads = []
    torch._dynamo.utils.counters.clear()
    compiled = CompiledRegions(model)  # as the trainer compiles: each block's forward, the loss
    for on in (False, True):
        compiled.use(on)
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            loss = model(x[:, :-1], x[:, 1:])[1]
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    compiled.use(False)
    assert "forward" not in vars(model.blocks[0]) and "loss" not in vars(model)  # switched off
    # one graph serves both blocks (the first recomputed under checkpointing, the second not),
    # one the loss
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    tol = 1e-2 if amp is None else 5e-2  # TF32 may be on in fp32
    for compiled, eager in zip(grads[1], grads[0], strict=True):
        assert (compiled - eager).float().norm() <= tol * eager.float().norm()


# the tiny recipe, long enough for compile: auto to time 3 eager steps, compile at step 4 and
# time compiled and eager steps in turn (5-10) before the checkpoint at step 10
TIMED_RECIPE = TINY_RECIPE.replace("max_steps: 12", "max_steps: 20").replace(
    "save_every: 6", "save_every: 10"
)


def fake_compile(monkeypatch, compiled_ms: float) -> list:
    """torch.compile as a wrapper and compile: auto's clock set so that an eager step takes
    10 ms, the first compiled step 2 s more and later ones compiled_ms; returns the compiled
    forwards of the first block, one per compile (each counts its calls: one per step)."""
    clock, compiles = [0.0], []

    def tick() -> float:
        clock[0] += 0.01
        return clock[0]

    class Compiled:
        def __init__(self, forward):
            self.forward, self.calls = forward, 0

        def __call__(self, *args, **kwargs):
            clock[0] += 2.0 if self.calls == 0 else (compiled_ms - 10) / 1000
            self.calls += 1
            return self.forward(*args, **kwargs)

    monkeypatch.setattr(autotune, "step_clock", tick)
    monkeypatch.setattr(autotune, "why_no_compile", lambda d: None)

    def wrap(forward):
        owner = forward.__self__  # a block (forward) or the model (loss)
        if not isinstance(owner, Block) or owner.attn.layer > 0:
            return forward  # the first block's forward times the step
        compiles.append(Compiled(forward))
        return compiles[-1]

    monkeypatch.setattr(torch, "compile", wrap)
    return compiles


def test_auto_decisions_are_recorded_and_reused_on_resume(tmp_path, monkeypatch):
    """dtype: auto and compile: auto decide once (probes, eager then compiled steps timed);
    state.json keeps what they decided and a resume on the same device type takes it without
    deciding again."""
    from gptcli import pretrain, recipe

    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(autotune, "bf16_training_speedup", lambda cfg, batch: 2.0)
    monkeypatch.setattr(autotune, "compile_pays", lambda *args: (True, "repays"))
    compiles = fake_compile(monkeypatch, compiled_ms=5)
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path, TIMED_RECIPE)
    pretrain.pretrain(recipe.load(path))
    run = tmp_path / "runs" / "mini"
    full = losses(run)
    decided = {
        "device": "cpu",
        "dtype": "bf16",
        "compile": True,
        "compiled_step_ms": 5.0,
        "eager_step_ms": 10.0,
    }
    for step in (10, 20):
        ckpt = run / "checkpoints" / f"step-{step:07d}"
        assert checkpoint.read_state(ckpt)["auto"] == decided
    assert len(compiles) == 1  # after the timed eager steps

    def no_probe(*args):
        raise AssertionError("a resumed run decided again")

    monkeypatch.setattr(autotune, "bf16_training_speedup", no_probe)
    monkeypatch.setattr(autotune, "compile_pays", no_probe)
    shutil.rmtree(run / "checkpoints" / "step-0000020")
    pretrain.pretrain(recipe.load(path))
    assert len(compiles) == 2 and compiles[1].calls == 10  # every resumed step
    resumed = losses(run)
    assert all(resumed[s] == full[s] for s in full if s > 10), (resumed, full)
    assert autotune.recorded_auto(run, torch.device("cpu")) == decided
    assert autotune.recorded_auto(run, torch.device("cuda")) == {}  # another device decides anew


def test_compile_auto_goes_back_to_eager_when_compiled_steps_are_slower(
    tmp_path, monkeypatch, capsys
):
    """The compiled step is timed against the eager one; slower, the run trains on eagerly
    (the same losses as a run that never compiled), records why, and keeps the measured compile
    cost for the next run's rule."""
    from gptcli import pretrain, recipe

    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTCLI_CACHE", str(cache))
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(autotune, "bf16_training_speedup", lambda cfg, batch: 2.0)
    monkeypatch.setattr(autotune, "compile_pays", lambda *args: (True, "repays"))
    compiles = fake_compile(monkeypatch, compiled_ms=20)
    monkeypatch.chdir(tmp_path)
    pretrain.pretrain(recipe.load(write_recipe(tmp_path, TIMED_RECIPE)))
    assert "compiled step 20 ms vs eager 10 ms: back to eager" in capsys.readouterr().err
    run = tmp_path / "runs" / "mini"
    for step in (10, 20):
        auto = checkpoint.read_state(run / "checkpoints" / f"step-{step:07d}")["auto"]
        assert auto["compile"] is False and auto["compiled_step_ms"] == 20.0
    assert [c.calls for c in compiles] == [4]  # compiling, then 3 timed steps beside 3 eager
    eager = write_recipe(tmp_path, TIMED_RECIPE.replace("name: mini", "name: eager"), "e.yaml")
    pretrain.pretrain(recipe.load(eager, ["train.compile=off"]))
    assert losses(run) == losses(tmp_path / "runs" / "eager")
    entries = json.loads((cache / CPU_PROBES).read_text()).values()
    costs = [e for e in entries if e["key"].startswith("compile s|LMTask|4|torch.bfloat16")]
    assert [e["value"] for e in costs] == [2.0] and costs[0]["measured"]


def test_dtype_auto_trains_in_fp32_where_bf16_measures_slower(tmp_path, monkeypatch):
    from gptcli import pretrain, recipe

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(autotune, "bf16_training_speedup", lambda cfg, batch: 0.8)
    monkeypatch.chdir(tmp_path)
    text = TINY_RECIPE.replace("max_steps: 12", "max_steps: 3").replace("save_every: 6", "")
    pretrain.pretrain(recipe.load(write_recipe(tmp_path, text)))
    final = checkpoint.newest_in_run(tmp_path / "runs" / "mini")
    # 3 steps are too few to time: compile stays undecided, for a longer resume to decide
    assert checkpoint.read_state(final)["auto"] == {"device": "cpu", "dtype": "fp32"}
