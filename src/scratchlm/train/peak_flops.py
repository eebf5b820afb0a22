"""The denominator of MFU: a device's peak FLOP/s from its specification, never a figure measured at run time.

A rate timed at the start of a run depends on what else shares the machine at that moment: timed while
another process held the cores, it came out low and the progress bar showed an MFU of 129%. MFU as PaLM
defines it (Chowdhery et al. 2022, app. B) divides by the hardware's theoretical peak, which does not move:

- CUDA: the datasheet's dense (no sparsity) tensor-core rate for bf16, or for TF32 when training in fp32,
  looked up by device name. An unknown GPU falls back to a timed matmul, and says so.
- CPU: threads x clock x FLOPs per cycle per core. FLOPs per cycle come from the vector ISA: two FMA units
  of 16 fp32 lanes with AVX-512 (64), of 8 with AVX2 (32), of 4 with SSE (16); bf16 doubles it with
  AVX512-BF16 dot products and AMX reaches 1024 per cycle. That is an upper bound (cores that run 512-bit
  FMAs at half rate, such as AMD Zen 4, peak at half of it), so MFU never passes 100%.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scratchlm.train.metrics import measure_matmul_flops

# Dense bf16 tensor-core TFLOP/s from the vendors' datasheets (TF32 is half of it on these parts).
_GPU_BF16_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0,
    "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0,
}  # fmt: skip


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one `device` in `dtype`, how it was obtained) for MFU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in _GPU_BF16_TFLOPS.items():  # longest names first within each family
            if key in name:
                rate = tflops * 1e12 if dtype == torch.bfloat16 else tflops * 1e12 / 2
                return rate, f"{name}: datasheet dense {'bf16' if dtype == torch.bfloat16 else 'tf32'}"

        return measure_matmul_flops(device, dtype), f"{name}: not in the datasheet table, timed matmul"
    if device.type == "cpu":
        flags = _cpu_flags()
        per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
        if dtype == torch.bfloat16:
            per_cycle = (
                1024 if "amx_bf16" in flags else 2 * per_cycle if "avx512_bf16" in flags else per_cycle
            )
        threads, ghz = torch.get_num_threads(), _cpu_ghz()
        how = f"CPU: {threads} threads x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"
        return threads * ghz * 1e9 * per_cycle, how

    return measure_matmul_flops(device, dtype), f"{device.type}: timed matmul"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_ghz() -> float:
    """The highest clock the kernel reports (cpufreq's maximum, else /proc/cpuinfo), 3 GHz if neither."""
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(max_freq.read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz")]  # fmt: skip
        if mhz:
            return max(mhz) / 1000
    except (OSError, ValueError):
        pass
    return 3.0
