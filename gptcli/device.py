"""The hardware: which device to run on, what it does fast (native bf16, torch.compile), its
peak FLOP/s for MFU, the cache of CPU probes, and DDP ranks.

The rules that choose dtype and compile from these answers (the `auto` settings) are autotune's,
except the dtype rule itself (autocast_dtype), which is here so that sampling needs no autotune.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from gptcli import console
from gptcli.console import UserError
from gptcli.files import cache_dir, write_atomic

# the cache file (in the cache dir) of the `auto` rules' CPU probes and measured compile costs
CPU_PROBES = "cpu_probes.json"
# Dense bf16 tensor-core peaks from the vendors' datasheets, by a substring of the device name.
CUDA_BF16_PEAKS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA GPU is available (use device: auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device is 'mps' but MPS is not available (use device: auto)")
    return torch.device(name)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same large tensors every time; by default glibc
    serves big ones with fresh mmaps and trims the heap, so each step faults its memory back in
    page by page (benchmarks/bench_train.py). The cost is a resident size that stays at its
    peak. Returns whether this C library took the settings (only glibc has mallopt).
    """
    return _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def return_large_buffers() -> bool:
    """Serve large allocations with mmaps that go back to the OS when freed: under FSDP each
    block's gathered weights are freed after use, and memory kept for reuse would end up holding
    every block's copy at once, as much as an unsharded rank. Returns whether glibc took it."""
    return _mallopt((M_MMAP_THRESHOLD, 128 * 1024))  # a fixed value ends the sliding threshold


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Apply (parameter, value) settings in order; False at the first refused, or where this C
    library has no mallopt (only glibc has it)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(parameter, value) for parameter, value in settings)


def why_no_compile(device: torch.device) -> str | None:
    """Why torch.compile cannot run on this device, or None: inductor builds CPU kernels with
    a C++ compiler, and a machine without one would fail at the first step."""
    if device.type != "cpu":
        return None
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception:  # inductor's own error says little to a user; ours names the fix
        return "no C++ compiler (g++, or $CXX) for torch.compile on CPU"
    return None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run much faster than fp32 there, and emulated (slower)
    elsewhere. torch's own cpuinfo probes, with /proc/cpuinfo flags where this torch lacks them."""
    probes = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(p is not None for p in probes):
        return any(p() for p in probes if p is not None)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def dtype_name(dtype: torch.dtype | None) -> str:
    """A precision as recipes, flags and records name it: bf16, else fp32 (None is plain fp32)."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast_dtype(
    device: torch.device,
    dtype: str,
    doing: str = "training",
    bf16_speedup: Callable[[], float] | None = None,
) -> torch.dtype | None:
    """The dtype rule, for training (autocast) and sampling (weights) alike: None means plain
    fp32. On a CPU, bf16_speedup (fp32 time over bf16 time of the work at hand, usually a cached
    probe) decides auto where bf16 is native. It lives here, beside the probe cache, so that
    sampling takes it without importing training's auto rules (autotune states them all)."""
    if dtype == "fp32":
        return None
    if dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        console.warn(f"this GPU has no bf16; {doing} in fp32 (fp16 without care gives NaNs)")
        return None
    if device.type == "cpu" and cpu_has_native_bf16():
        if bf16_speedup is None or bf16_speedup() > 1.0:
            return torch.bfloat16
    return None


def cached_probe(file: str, what: str, measure: Callable[[], float]) -> float:
    """measure(), run once per `what` on this CPU, thread count and torch, then read from
    file in the cache dir: a probe costs seconds, and its answer only changes with the machine."""
    value = read_probe(file, what)
    if value is None:
        value = measure()
        write_probe(file, what, value)
    return value


def read_probe(file: str, what: str) -> float | None:
    """The value recorded for `what` on this CPU, thread count and torch, or None."""
    entry = _probe_cache(file).get(_probe_key(what)[0])
    if isinstance(entry, dict):
        return entry.get("value")
    return entry  # a bare number: written before entries carried their key and date


def write_probe(file: str, what: str, value: float) -> None:
    """Record value for `what` (replacing any before), with the full key and today's date, so
    the file says what each number was measured for and when."""
    digest, key = _probe_key(what)
    cache = _probe_cache(file)
    cache[digest] = {"value": value, "key": key, "measured": time.strftime("%Y-%m-%d")}
    try:
        path = cache_dir() / file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(cache, indent=1).encode())
    except OSError:
        pass  # a read-only cache dir only costs a re-measure next time


def _probe_key(what: str) -> tuple[str, str]:
    """(digest, key): a probe's answer holds for one CPU model, thread count and torch version;
    any other of these (a torch upgrade included) measures again."""
    threads = torch.get_num_threads()
    key = f"{what}|{platform.machine()}|{_cpu_model()}|{threads}|{torch.__version__}"
    return hashlib.sha256(key.encode()).hexdigest()[:16], key


def _probe_cache(file: str) -> dict:
    try:
        cache = json.loads((cache_dir() / file).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def faster_ratio(slow: Callable[[], None], fast: Callable[[], None], rounds: int = 3) -> float:
    """Best time of slow over best time of fast (see best_times)."""
    slow_s, fast_s = best_times([slow, fast], rounds)
    return slow_s / fast_s


def best_times(
    calls: Sequence[Callable[[], None]], rounds: int = 3, warmup: int = 1
) -> list[float]:
    """Each call's best time in seconds, the calls taking turns after `warmup` calls each:
    another process on the machine slows a call down, never speeds it up."""
    for call in calls:
        for _ in range(warmup):
            call()
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def autocast(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to amp (bf16) on device, or plain fp32 when amp is None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _probe_matmul(dtype: torch.dtype, windows: int = 5, seconds: float = 0.1) -> float:
    """The best of several short timed windows of a large matmul.

    Another process on the machine can only slow a window down, so the best one is the closest
    to the hardware's peak.
    """
    # 2048-wide matmuls reach an AMX CPU's bf16 peak, where smaller ones stay below it; but an
    # emulated bf16 one that wide takes minutes, so the width doubles only while one is quick
    n = 256
    while True:
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        a @ b  # warm up
        start = time.perf_counter()
        a @ b
        if n >= 2048 or time.perf_counter() - start > 0.1:
            break
        n *= 2
    best = 0.0
    for _ in range(windows):
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            runs += 1
        best = max(best, 2 * n**3 * runs / (time.perf_counter() - start))
    return best


def peak_flops(device: torch.device, amp: torch.dtype | None) -> tuple[float | None, str]:
    """The device's peak FLOP/s for MFU, and where the number came from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in CUDA_BF16_PEAKS.items():
            if key in name:
                return (peak if amp is not None else peak / 2), f"{name} datasheet"
        return None, f"{name}: peak unknown"
    if device.type != "cpu":
        return None, f"{device.type}: peak unknown"
    dtype = peak_dtype(amp)
    peak = cached_probe("cpu_peak_flops.json", f"probe2|{dtype}", lambda: _probe_matmul(dtype))
    return peak, f"measured {str(dtype).removeprefix('torch.')} matmul on this CPU"


def peak_dtype(amp: torch.dtype | None) -> torch.dtype:
    """The dtype whose matmul is a CPU's peak for training in amp: emulated bf16 is slower
    than fp32, so there the fp32 matmul is the peak (timing a 2048-wide bf16 one took minutes
    on an AVX2-only CPU)."""
    dtype = amp or torch.float32
    if dtype == torch.bfloat16 and not cpu_has_native_bf16():
        return torch.float32
    return dtype


def remeasure_peak(device: torch.device, amp: torch.dtype | None, reached: float) -> float:
    """A CPU peak measured again after a run went faster than the cached one (a probe taken
    while another process was busy reads low, and would otherwise stay low): the higher of a
    new probe and the FLOP/s the run reached, cached in place of the old one."""
    dtype = peak_dtype(amp)
    peak = max(_probe_matmul(dtype), reached)
    write_probe("cpu_peak_flops.json", f"probe2|{dtype}", peak)
    return peak


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        return ""


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group torchrun set up (RANK/WORLD_SIZE in the environment), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return Dist()
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank)
