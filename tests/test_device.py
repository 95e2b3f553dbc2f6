import json

import pytest
import torch

from gptcli import device


def test_cpu_peak_is_measured_once_per_dtype_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path))
    probes = []
    monkeypatch.setattr(device, "_probe_matmul", lambda dtype: probes.append(dtype) or 1e11)
    cpu = torch.device("cpu")
    peak, source = device.peak_flops(cpu, None)
    assert (peak, source) == (1e11, "measured float32 matmul on this CPU")
    assert device.peak_flops(cpu, None)[0] == 1e11
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert device.peak_flops(cpu, torch.bfloat16)[1] == "measured bfloat16 matmul on this CPU"
    assert probes == [torch.float32, torch.bfloat16]  # the repeat came from the cache
    assert len(json.loads((tmp_path / "cpu_peak_flops.json").read_text())) == 2


def test_cpu_without_native_bf16_takes_the_fp32_peak_for_bf16(tmp_path, monkeypatch):
    """Emulated bf16 runs below the fp32 matmul, so that is the peak (and no bf16 probe)."""
    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path))
    probes = []
    monkeypatch.setattr(device, "_probe_matmul", lambda dtype: probes.append(dtype) or 1e11)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    peak, source = device.peak_flops(torch.device("cpu"), torch.bfloat16)
    assert (peak, source) == (1e11, "measured float32 matmul on this CPU")
    assert probes == [torch.float32]


def test_cpu_peak_probe_measures_a_real_matmul():
    assert device._probe_matmul(torch.float32, windows=2, seconds=0.02) > 1e9


@pytest.mark.parametrize(
    ("name", "amp", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
        ("NVIDIA A100-SXM4-80GB", None, 156e12),  # fp32 (TF32) is half the bf16 peak
    ],
)
def test_gpu_peak_comes_from_the_datasheet(monkeypatch, name, amp, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device.peak_flops(torch.device("cuda"), amp) == (peak, f"{name} datasheet")


def test_compile_is_refused_on_cpu_only_without_a_cpp_compiler():
    from torch._inductor import config

    assert device.why_no_compile(torch.device("cuda")) is None  # no host compiler needed
    with config.patch({"cpp.cxx": ("gptcli-no-such-g++",)}):
        assert "no C++ compiler" in device.why_no_compile(torch.device("cpu"))


def test_probes_run_once_per_shape_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCLI_CACHE", str(tmp_path))
    calls = []
    assert device.cached_probe("p.json", "shape a", lambda: calls.append(1) or 1.5) == 1.5
    assert device.cached_probe("p.json", "shape a", lambda: calls.append(1) or 0.5) == 1.5
    assert device.cached_probe("p.json", "shape b", lambda: calls.append(1) or 0.5) == 0.5
    assert calls == [1, 1]
    # each entry says what it was measured for (torch version, CPU) and when
    entries = json.loads((tmp_path / "p.json").read_text()).values()
    assert all(torch.__version__ in e["key"] and e["measured"] for e in entries)
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch measures again
    assert device.cached_probe("p.json", "shape a", lambda: calls.append(1) or 0.5) == 0.5
    assert calls == [1, 1, 1]


def test_faster_ratio_is_slow_time_over_fast_time():
    import time

    assert device.faster_ratio(lambda: time.sleep(0.02), lambda: None, rounds=1) > 1


def test_best_times_warm_each_call_up_then_take_turns():
    calls = []
    times = device.best_times([lambda: calls.append("a"), lambda: calls.append("b")], rounds=2)
    assert calls == ["a", "b"] * 3 and len(times) == 2 and min(times) >= 0


def test_a_precision_is_named_bf16_or_fp32():
    names = [device.dtype_name(d) for d in (torch.bfloat16, None, torch.float32)]
    assert names == ["bf16", "fp32", "fp32"]
