"""What the machine offers: the CPU model and its vector instruction sets, and the GPU's name.

Speed depends on the CPU model (an AMD EPYC and two Intel Xeon generations gave the same
benchmark 2.2×–3.2×), so every benchmark prints `describe_machine()`; `native_bf16` says where
bfloat16 arithmetic runs in hardware (avx512_bf16 or AMX on a CPU, Ampere or later on a GPU),
the only places a bf16 speed lever can pay.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# The instruction-set flags that decide which kernels oneDNN / PyTorch can use.
INTERESTING_FLAGS = ("avx2", "fma", "avx512", "amx", "avx_vnni", "avx512_bf16", "avx512_fp16")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what `platform` knows)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


# (vendor, family, model) -> generation, for the CPUs such machines have (a virtual machine's
# model name often says only "Intel(R) Xeon(R) Processor").
GENERATIONS = {("GenuineIntel", 6, 85): "Skylake/Cascade Lake", ("GenuineIntel", 6, 106): "Ice Lake",
               ("GenuineIntel", 6, 143): "Sapphire Rapids", ("GenuineIntel", 6, 207): "Emerald Rapids",
               ("GenuineIntel", 6, 173): "Granite Rapids", ("AuthenticAMD", 23, None): "Zen 1/2",
               ("AuthenticAMD", 25, None): "Zen 3/4", ("AuthenticAMD", 26, None): "Zen 5"}


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_generation() -> str | None:
    """The CPU's microarchitecture from its vendor/family/model numbers, where known."""
    vendor, family, model = (_cpuinfo_field(k) for k in ("vendor_id", "cpu family", "model"))
    if not (vendor and family and model and family.isdigit() and model.isdigit()):
        return None
    key = (vendor, int(family), int(model))
    return GENERATIONS.get(key) or GENERATIONS.get((vendor, int(family), None))


def cpu_flags() -> list[str]:
    """The CPU's vector-extension flags (avx2, fma, avx512*, amx*, avx_vnni), sorted; empty where unknown."""
    flags = (_cpuinfo_field("flags") or "").split()
    return sorted(f for f in flags if f.startswith(INTERESTING_FLAGS))


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 matmuls/convolutions run in hardware here (else they are emulated: slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = set(cpu_flags())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_name() -> str | None:
    """The first CUDA device's name, or None without one."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def describe_machine() -> str:
    """One line for a benchmark's header: CPU model, core count, flags, torch version and threads."""
    flags = " ".join(cpu_flags()) or "(flags unknown)"
    generation = cpu_generation()
    name = cpu_model() + (f" ({generation})" if generation else "")
    line = (f"CPU: {name}, {os.cpu_count()} logical CPUs; flags: {flags}; "
            f"bf16 in hardware: {'yes' if native_bf16('cpu') else 'no'}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
    gpu = gpu_name()
    return line + (f"; GPU: {gpu}" if gpu else "")
