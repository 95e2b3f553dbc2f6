"""The `auto` settings and the probes behind them: train.dtype, train.compile and sampling's
--dtype. fp32/bf16 and on/off are taken as written; auto never keeps the slower path, and a run
keeps what it decided. time_training_steps is the one timed training step (the dtype probe and
`inspect RECIPE`'s estimate of a run's duration time it).

dtype: auto (training autocast, sampling weights)
- bf16 on a GPU that has it; a GPU without it runs fp32, with a warning.
- bf16 on a CPU with native bf16 (AVX512-BF16 or AMX) only when a probe of the work at hand
  measures it faster than fp32: a training step (bf16_training_speedup), or sampling rows at a
  time (the sampler's own probe, passed to autocast_dtype as a callable; the rule itself is
  device.autocast_dtype, so sampling need not import this module), of a random model of
  this shape; native bf16 still loses on small models. fp32 on any other CPU or device.
- Under torchrun on CPUs every rank probes, and bf16 is taken only where every rank measured it
  faster.

compile: auto (training; compiles the regions of CompiledRegions)
- On a GPU: compiled. On another device that is not a CPU: eager.
- On a CPU: PROBE_STEPS eager steps are timed (the first warms up); compile when the eager time
  left is over PAYBACK x the expected first compile (compile_pays): the cost a run here measured
  for this shape, else COMPILE_S. Then, after the compiling step, CHECK_STEPS compiled and as many
  eager steps take turns; the compiled regions stay only when their best step beats the best
  eager one (AutoCompile.keep_compiled). The compiling step less an eager one is kept as this
  shape's compile cost for the next run.
- With PROBE_STEPS steps or fewer left: eager, left undecided, so a resume with a higher
  max_steps decides for its own length.

Falling back: a CPU without a C++ compiler trains eager (with a warning) whatever compile says;
compiled steps that time slower go back to eager.

Kept: a run records its decisions in each checkpoint's state ("auto"), and a resume on the
same kind of device takes them without probing again (recorded_auto). A probe's answer is
cached per CPU, thread count and torch in the cache dir (device.CPU_PROBES).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from gptcli import checkpoint, console, optim, parallel
from gptcli import device as device_mod
from gptcli.device import (  # autocast_dtype: the dtype rule lives there, sampling imports it too
    CPU_PROBES,
    Dist,
    autocast,
    autocast_dtype,
    best_times,
    cached_probe,
    dtype_name,
    read_probe,
    why_no_compile,
    write_probe,
)
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, TrainConfig

# compile: auto on CPU times this many eager steps (the first warms up) before deciding
PROBE_STEPS = 3
# once compiled, after the first compiled step (which compiles), this many compiled and as many
# eager steps take turns, timed; the compiled regions stay only when their best step is faster
CHECK_STEPS = 3
# a first torch.compile on a CPU, in seconds, for a shape never compiled on this machine (one
# block is traced whatever the depth, see CompiledRegions); after one run here compiles the
# shape, the cost it measured replaces this estimate
COMPILE_S = 30.0
# compile only when the eager time left is this many times the compile: it then pays back
# if compiled steps are at least 1/PAYBACK faster
PAYBACK = 10


# --------------------------------------------------------------------------- dtype: auto


def time_training_steps(
    cfg: ModelConfig,
    rows: int,
    device: torch.device,
    amps: Sequence[torch.dtype | None],
    train: TrainConfig | None = None,
    rounds: int = 3,
    warmup: int = 1,
) -> list[float]:
    """The best seconds of a training step of a random model of cfg's shape on `rows` random
    sequences, one per autocast dtype in amps (None: fp32), the dtypes taking turns after
    `warmup` steps each (another process on the machine only ever slows a step down). With
    train, a step ends with the optimizers train builds, as a run's does; without, it is the
    forward and backward (all that a dtype changes)."""
    with torch.random.fork_rng(devices=[]):  # the caller's seed stays untouched
        torch.manual_seed(0)
        model = GPT(cfg)
        x = torch.randint(0, cfg.vocab_size, (rows, cfg.block_size + 1))
    model, x = model.to(device), x.to(device)
    optimizers = optim.build_optimizers(model, train, device) if train is not None else []

    def step(amp: torch.dtype | None) -> None:
        with autocast(device, amp):
            loss = model(x[:, :-1], x[:, 1:])[1]
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":  # the step's kernels finish inside its time
            torch.cuda.synchronize(device)

    return best_times([lambda amp=amp: step(amp) for amp in amps], rounds, warmup)


def bf16_training_speedup(cfg: ModelConfig, batch_size: int) -> float:
    """fp32 time over bf16-autocast time of a training step (forward, backward) of a random
    model of cfg's shape on this CPU (measured once per shape, then cached)."""
    rows = max(1, min(batch_size, 1024 // cfg.block_size))  # enough rows for full-speed matmuls

    def measure() -> float:
        fp32, bf16 = time_training_steps(cfg, rows, torch.device("cpu"), [None, torch.bfloat16])
        return fp32 / bf16

    shape = f"bf16 train|{rows}|{sorted(dataclasses.asdict(cfg).items())}"
    return cached_probe(CPU_PROBES, shape, measure)


def training_amp(
    device: torch.device, dtype: str, cfg: ModelConfig, batch_size: int
) -> torch.dtype | None:
    """train.dtype for this model on device: auto with the bf16 probe of its shape on a CPU."""
    speedup = lambda: bf16_training_speedup(cfg, batch_size)  # noqa: E731
    return autocast_dtype(device, dtype, "training", speedup)


def recorded_auto(run_dir: Path, device: torch.device) -> dict:
    """What dtype: auto and compile: auto decided for this run, from its newest checkpoint, when
    it was trained on the same kind of device (a resume then takes the same path)."""
    ckpt = checkpoint.newest_in_run(run_dir)
    auto = checkpoint.read_state(ckpt).get("auto", {}) if ckpt else {}
    return auto if auto.get("device") == device.type else {}


def pick_amp(
    t: TrainConfig, device: torch.device, dist: Dist, cfg: ModelConfig, auto: dict
) -> torch.dtype | None:
    """train.dtype for a run: as the recipe says; auto as the run decided before (auto, from
    recorded_auto), else by the rule, every rank voting on CPUs. Records the device and what
    auto decided in auto."""
    if t.dtype == "auto" and "dtype" in auto:
        amp = torch.bfloat16 if auto["dtype"] == "bf16" else None
        console.info(f"train: dtype auto: {auto['dtype']}, as this run decided before")
    else:
        amp = training_amp(device, t.dtype, cfg, t.batch_size)
        cpu_auto = t.dtype == "auto" and device.type == "cpu"
        if cpu_auto and dist.world > 1:
            # each rank timed its own probe: bf16 only where every rank found it faster
            votes = parallel.all_mean(torch.tensor(float(amp is not None)), dist)
            amp = torch.bfloat16 if votes.item() == 1.0 else None
        if cpu_auto and amp is None and device_mod.cpu_has_native_bf16():
            console.info("train: dtype auto: fp32 (bf16 measured slower for this model here)")
    auto["device"] = device.type
    if t.dtype == "auto":
        auto["dtype"] = dtype_name(amp)
    return amp


# --------------------------------------------------------------------------- compile: auto


def compile_pays(
    remaining_steps: int, step_s: float, compile_s: float, source: str = "estimated"
) -> tuple[bool, str]:
    """The compile: auto rule on CPU, and why it decided: compile when the eager time still to
    run (remaining_steps x step_s) is over PAYBACK x the expected first compile (compile_s, see
    expected_compile_s). A compiled step then timed slower than eager goes back to eager
    (AutoCompile.keep_compiled)."""
    eager_s = remaining_steps * step_s
    rule = f"{PAYBACK}x the ~{compile_s:.0f} s a first compile takes ({source})"
    left = f"{remaining_steps} steps left at {step_s * 1000:.0f} ms take ~{eager_s:.0f} s eager"
    if eager_s > PAYBACK * compile_s:
        return True, f"{left}, over {rule}"
    return False, f"{left}, under {rule}"


def compile_cost_key(cfg: ModelConfig, batch_size: int, amp: torch.dtype | None, task: str) -> str:
    return f"compile s|{task}|{batch_size}|{amp}|{sorted(dataclasses.asdict(cfg).items())}"


def expected_compile_s(
    cfg: ModelConfig, batch_size: int, amp: torch.dtype | None, task: str = "LMTask"
) -> tuple[float, str]:
    """Seconds a first compile of this training step takes on this CPU, and where the figure
    comes from: as the last run here that compiled it measured, else the estimate."""
    measured = read_probe(CPU_PROBES, compile_cost_key(cfg, batch_size, amp, task))
    if measured is not None:
        return measured, "as measured here"
    return COMPILE_S, "estimated"


class CompiledRegions:
    """The training step's compiled regions, switched on and off: each transformer block's
    forward, and the model's loss.

    Every block runs the same code on same-shaped inputs, so dynamo traces one block and the
    rest reuse its graph: a first compile costs one block whatever the depth, where compiling
    the whole step traced each block (benchmarks/README.md); the loss, compiled apart, fuses its
    softmax as the whole step did. The embedding and module hooks (DDP, FSDP) stay eager around
    them. Switched off, the model runs its own methods again, so anything but the training step
    (evaluation) runs eager."""

    def __init__(self, model: GPT) -> None:
        self.regions = [(block, "forward") for block in model.blocks] + [(model, "loss")]
        self.compiled = [torch.compile(getattr(owner, name)) for owner, name in self.regions]
        self.on = False

    def use(self, on: bool) -> None:
        for (owner, name), compiled in zip(self.regions, self.compiled, strict=True):
            if on:
                setattr(owner, name, compiled)  # the instance attribute shadows the method
            else:
                vars(owner).pop(name, None)
        self.on = on


def step_clock() -> float:
    """The clock compile: auto times steps with (its own name, so tests can set the times)."""
    return time.perf_counter()


class AutoCompile:
    """train.compile for one run: its model's compiled regions, on or off, and compile: auto's
    timed steps on a CPU. Decisions go into auto (the run's recorded decisions)."""

    def __init__(
        self,
        model: GPT,
        t: TrainConfig,
        device: torch.device,
        dist: Dist,
        auto: dict,
        shape: tuple[ModelConfig, int, torch.dtype | None, str],
    ) -> None:
        self.model, self.t, self.device, self.dist, self.auto = model, t, device, dist, auto
        # what a compile's cost depends on: the model, the batch, the dtype and the task
        self.shape = shape
        self.timing: str | None = None  # "probe" (eager steps), "check" (compiled, eager)
        self.timed_s: list[float] = []
        self.check_s: dict[str, list[float]] = {"compiled": [], "eager": []}
        self.compile_step_s: float | None = None
        self.regions: CompiledRegions | None = None
        self.traced = False  # whether a step has run the compiled regions (compiling them)

    def start(self, step: int) -> None:
        """Compile the regions or not, as train.compile says, at a run's first step; auto on a
        CPU decides after timing PROBE_STEPS eager steps (see after_timed_step) unless the run
        decided before."""
        t = self.t
        if t.compile == "auto" and "compile" in self.auto:
            wanted = self.auto["compile"]
            decided = "compiling" if wanted else "eager"
            console.info(f"train: compile auto: {decided}, as this run decided before")
        elif t.compile == "auto" and self.device.type == "cpu":
            wanted = False
            if t.max_steps - step > PROBE_STEPS:
                self.timing = "probe"
            else:
                # not recorded: a resume with a higher max_steps decides for its own length
                console.info("train: compile auto: eager (too few steps to repay a compile)")
        else:
            wanted = t.compile == "on" or (t.compile == "auto" and self.device.type == "cuda")
        if t.compile == "auto" and self.device.type != "cpu":
            self.auto["compile"] = wanted
        if wanted:
            self.compile()

    def compile(self) -> None:
        reason = why_no_compile(self.device)
        if reason:
            console.warn(f"train.compile: {reason}; training without it")
            return
        console.info("train: torch.compile: the first step compiles (cached for reuse)")
        self.regions = CompiledRegions(self.model)
        self.regions.use(True)

    def use(self, on: bool) -> None:
        if self.regions is not None:
            self.regions.use(on)

    @property
    def on(self) -> bool:
        """Whether the compiled regions run now."""
        return self.regions is not None and self.regions.on

    @property
    def compiles_next(self) -> bool:
        """Whether the next step is the first through the compiled regions: the one that
        compiles them."""
        return self.on and not self.traced

    def compiled(self) -> None:
        """The compiling step has run: later steps reuse its graphs."""
        self.traced = True

    def after_timed_step(self, seconds: float, step: int) -> bool:
        """compile: auto on CPU, after a step (`step` taken) that took seconds: after
        PROBE_STEPS eager steps, decide_compile; once compiled, the compiling step, then
        compiled and eager steps in turn until keep_compiled. True when the next steps' speed
        changes for a known reason (a compile starts, or the timed steps end)."""
        if self.timing == "probe":
            self.timed_s.append(seconds)
            return len(self.timed_s) == PROBE_STEPS and self.decide_compile(step)
        ran = "compiled" if self.on else "eager"
        if self.compile_step_s is None:
            self.compile_step_s = seconds
        else:
            self.check_s[ran].append(seconds)
        compiled, eager = (len(self.check_s[k]) for k in ("compiled", "eager"))
        if eager == CHECK_STEPS:
            self.keep_compiled()
            return True
        self.use(compiled <= eager)
        return False

    def ranks_mean(self, seconds: float) -> float:
        """Every rank decides on the same step times."""
        return parallel.all_mean(torch.tensor(seconds, dtype=torch.float64), self.dist).item()

    def decide_compile(self, step: int) -> bool:
        """Compile when the steps left repay it (compile_pays, on the probe's mean step time);
        the decision is recorded once keep_compiled has timed compiled steps, so a resume
        before then decides again. True when it compiles."""
        step_s = self.ranks_mean(statistics.mean(self.timed_s[1:]))  # the first warms up
        compile_s = expected_compile_s(*self.shape)
        wanted, why = compile_pays(self.t.max_steps - step, step_s, *compile_s)
        console.info(f"train: compile auto: {'compiling' if wanted else 'eager'} ({why})")
        self.timing = "check" if wanted else None
        if wanted:
            self.compile()
        if self.regions is None:  # not compiling, or no C++ compiler
            self.timing = None
            self.auto["compile"] = False
        return wanted

    def keep_compiled(self) -> None:
        """Keep the compiled regions only when their best timed step beats the best eager one,
        else go back to eager. The two took turns, so a busy spell on the machine
        slows both alike, and the best of each leaves out a recompile; both train the same
        parameters with the same optimizers, so only speed changes. The compiling step less an
        eager one is this shape's compile cost, kept for the next run's compile_pays."""
        first = self.ranks_mean(self.compile_step_s or 0.0)
        compiled_s = self.ranks_mean(min(self.check_s["compiled"]))
        eager_s = self.ranks_mean(min(self.check_s["eager"]))
        self.timing = None
        if self.dist.main:
            cost = round(max(0.0, first - eager_s), 3)
            write_probe(CPU_PROBES, compile_cost_key(*self.shape), cost)
        kept = compiled_s < eager_s
        self.auto.update(
            compile=kept,
            compiled_step_ms=round(compiled_s * 1000, 2),
            eager_step_ms=round(eager_s * 1000, 2),
        )
        timings = f"compiled step {compiled_s * 1000:.0f} ms vs eager {eager_s * 1000:.0f} ms"
        console.info(f"train: compile auto: {timings}: {'kept' if kept else 'back to eager'}")
        self.use(kept)
        if not kept:
            self.regions = None
