"""Machine-info parsing on sample text (CPU, nvidia-smi, Jetson release / nvpmodel / jetson_clocks)."""

from __future__ import annotations

from apd_edge.bench.machine import (describe, machine_info, parse_cpuinfo, parse_cuda_version, parse_jetson_clocks,
                                    parse_nvidia_smi, parse_nvpmodel, parse_tegra_release)

CPUINFO_X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 0

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 0

processor\t: 2
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
physical id\t: 0
core id\t\t: 1
"""

CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU implementer\t: 0x41

processor\t: 1
BogoMIPS\t: 62.50

Hardware\t: NVIDIA Jetson AGX Orin
"""

TEGRA = ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
         "DATE: Fri Jul 19 23:24:25 UTC 2024\n")

NVPMODEL = "NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n"
NVPMODEL_15W = "NV Power Mode: 15W\n2\n"

CLOCKS_LOCKED = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
cpu1: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
NV Power Mode: MAXN
"""
CLOCKS_DEFAULT = CLOCKS_LOCKED.replace("MinFreq=2201600", "MinFreq=729600").replace(
    "GPU MinFreq=1300500000", "GPU MinFreq=306000000").replace("FreqOverride=1", "FreqOverride=0")

SMI = "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\nNVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n"
SMI_BANNER = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"


def test_cpuinfo_x86_counts_physical_cores():
    info = parse_cpuinfo(CPUINFO_X86)
    assert info == {"cpu_model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", "logical_cpus": 3, "physical_cores": 2}


def test_cpuinfo_arm_uses_hardware_line():
    info = parse_cpuinfo(CPUINFO_ARM)
    assert info["cpu_model"] == "NVIDIA Jetson AGX Orin" and info["logical_cpus"] == 2
    assert info["physical_cores"] is None


def test_nvidia_smi_rows_and_cuda_version():
    gpus = parse_nvidia_smi(SMI)
    assert len(gpus) == 2 and gpus[0] == {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB"}
    assert parse_nvidia_smi("") == []
    assert parse_cuda_version(SMI_BANNER) == "12.4"
    assert parse_cuda_version("no gpu") is None


def test_jetson_release_and_power_mode():
    assert parse_tegra_release(TEGRA) == "R36.3.0"
    assert parse_tegra_release("garbage") is None
    assert parse_nvpmodel(NVPMODEL) == {"power_mode": "MAXN", "power_mode_id": 0}
    assert parse_nvpmodel(NVPMODEL_15W) == {"power_mode": "15W", "power_mode_id": 2}
    assert parse_nvpmodel("") == {"power_mode": None, "power_mode_id": None}


def test_jetson_clocks_locked_vs_default():
    locked = parse_jetson_clocks(CLOCKS_LOCKED)
    assert locked == {"clocks_locked": True, "gpu_freq_hz": 1300500000, "emc_override": True}
    free = parse_jetson_clocks(CLOCKS_DEFAULT)
    assert free["clocks_locked"] is False and free["emc_override"] is False
    assert parse_jetson_clocks("jetson_clocks: permission denied")["clocks_locked"] is None


def test_machine_info_here_has_cpu_and_ort_version():
    info = machine_info()
    assert info["cpu_model"] and info["affinity_cpus"] >= 1
    assert info["onnxruntime"]  # installed in this environment
    assert info["jetson"] is False
    assert "CPU" in describe(info)
