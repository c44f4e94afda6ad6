"""Machine information recorded next to every benchmark: CPU, GPU, driver, CUDA, TensorRT/ORT, Jetson.

Parsing lives in pure functions (``parse_*``) tested on sample text; ``machine_info()`` only gathers
the text (files, ``nvidia-smi``, ``nvpmodel -q``, ``jetson_clocks --show``) and never imports torch.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

NVIDIA_SMI_QUERY = "name,driver_version,memory.total"


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model name and logical/physical core counts from ``/proc/cpuinfo`` text (x86 and ARM)."""
    model = None
    logical = 0
    cores: set[tuple[str, str]] = set()
    phys_id = core_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            logical += 1
        elif key in ("model name", "hardware", "cpu model") and model is None and value:
            model = value
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
            cores.add((phys_id or "0", core_id))
    return {"cpu_model": model, "logical_cpus": logical or None, "physical_cores": len(cores) or None}


def parse_nvidia_smi(text: str) -> list[dict[str, str]]:
    """Rows of ``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader``."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def parse_cuda_version(text: str) -> str | None:
    """``CUDA Version: 12.4`` from the plain ``nvidia-smi`` banner (the driver's CUDA version)."""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    return m.group(1) if m else None


def parse_tegra_release(text: str) -> str | None:
    """L4T release from ``/etc/nv_tegra_release``: ``# R36 (release), REVISION: 3.0, ...`` -> ``R36.3.0``."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """Power mode from ``nvpmodel -q``: ``NV Power Mode: MAXN`` followed by the mode id on its own line."""
    name = mode_id = None
    lines = [ln.strip() for ln in text.splitlines()]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode\s*:\s*(.+)$", line)
        if m:
            name = m.group(1).strip()
            for nxt in lines[i + 1 :]:
                if nxt.isdigit():
                    mode_id = int(nxt)
                    break
                if nxt:
                    break
    return {"power_mode": name, "power_mode_id": mode_id}


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """Whether clocks are locked, from ``jetson_clocks --show``.

    ``jetson_clocks`` pins every CPU core's and the GPU's minimum frequency to its maximum, so clocks
    count as locked when every ``MinFreq`` equals its ``MaxFreq`` on the CPU and GPU lines (EMC is
    reported separately through ``FreqOverride``). ``None`` when the text holds no frequency lines.
    """
    pairs: list[tuple[str, int, int]] = []
    gpu_cur = None
    emc_override = None
    for line in text.splitlines():
        line = line.strip()
        mn = re.search(r"MinFreq=(\d+)", line)
        mx = re.search(r"MaxFreq=(\d+)", line)
        if line.startswith("EMC"):
            ov = re.search(r"FreqOverride=(\d+)", line)
            emc_override = bool(int(ov.group(1))) if ov else None
            continue
        if not (mn and mx):
            continue
        unit = line.split(":")[0].split()[0] if line else "?"
        pairs.append((unit, int(mn.group(1)), int(mx.group(1))))
        if line.startswith("GPU"):
            cur = re.search(r"CurrentFreq=(\d+)", line)
            gpu_cur = int(cur.group(1)) if cur else None
    if not pairs:
        return {"clocks_locked": None, "gpu_freq_hz": None, "emc_override": emc_override}
    locked = all(lo == hi for _, lo, hi in pairs)
    return {"clocks_locked": locked, "gpu_freq_hz": gpu_cur, "emc_override": emc_override}


JETSON_GPU_DEVFREQ = ("gpu", "ga10b", "gv11b", "gp10b", "gm20b")  # devfreq names of Jetson GPUs


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def clocks_from_sysfs(root: str | Path = "/") -> dict[str, Any]:
    """Clock lock state without root (``jetson_clocks --show`` needs it): clocks count as locked when every
    CPU's cpufreq ``scaling_min_freq`` equals its ``scaling_max_freq`` and the GPU devfreq ``min_freq``
    equals ``max_freq``, which is what ``jetson_clocks`` sets. ``None`` when sysfs shows no such files."""
    root = Path(root)
    pairs = []
    for d in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        lo, hi = _read_int(d / "scaling_min_freq"), _read_int(d / "scaling_max_freq")
        if lo is not None and hi is not None:
            pairs.append((lo, hi))
    gpu_cur = None
    for d in sorted((root / "sys/class/devfreq").glob("*")):
        if any(k in d.name.lower() for k in JETSON_GPU_DEVFREQ):
            lo, hi = _read_int(d / "min_freq"), _read_int(d / "max_freq")
            if lo is not None and hi is not None:
                pairs.append((lo, hi))
                gpu_cur = _read_int(d / "cur_freq")
    if not pairs:
        return {"clocks_locked": None, "gpu_freq_hz": None, "clocks_source": None}
    return {"clocks_locked": all(lo == hi for lo, hi in pairs), "gpu_freq_hz": gpu_cur, "clocks_source": "sysfs"}


def parse_nvpmodel_status(text: str) -> int | None:
    """Power mode id from ``/var/lib/nvpmodel/status`` (``pmode:0002``), readable without nvpmodel."""
    m = re.search(r"pmode:\s*(\d+)", text)
    return int(m.group(1)) if m else None


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    """stdout of ``cmd``, or None when it is missing, fails or takes too long."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def _version(dist: str, *alternatives: str) -> str | None:
    for name in (dist, *alternatives):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def is_jetson(tegra_release_path: str = "/etc/nv_tegra_release") -> bool:
    return os.path.exists(tegra_release_path)


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to trust a latency number, gathered without importing torch."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    info.update(parse_cpuinfo(_read("/proc/cpuinfo") or ""))
    if not info.get("cpu_model"):
        info["cpu_model"] = platform.processor() or platform.machine()
    smi = _run(["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader"])
    gpus = parse_nvidia_smi(smi) if smi else []
    info["gpus"] = gpus
    info["gpu"] = gpus[0]["name"] if gpus else None
    info["driver"] = gpus[0]["driver"] if gpus else None
    banner = _run(["nvidia-smi"]) if gpus else None
    info["cuda_driver_version"] = parse_cuda_version(banner) if banner else None
    info["onnxruntime"] = _version("onnxruntime", "onnxruntime-gpu")
    info["tensorrt"] = _version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs")
    info["torch"] = _version("torch")  # the version string only: torch itself is not imported
    info["jetson"] = is_jetson()
    if info["jetson"]:
        info["l4t"] = parse_tegra_release(_read("/etc/nv_tegra_release") or "")
        info.update(parse_nvpmodel(_run(["nvpmodel", "-q"]) or ""))
        if info.get("power_mode_id") is None:
            info["power_mode_id"] = parse_nvpmodel_status(_read("/var/lib/nvpmodel/status") or "")
        clocks = _run(["jetson_clocks", "--show"])
        parsed = parse_jetson_clocks(clocks) if clocks else {"clocks_locked": None}
        if parsed.get("clocks_locked") is None:  # not root: jetson_clocks --show refuses; sysfs is world-readable
            parsed = {**parsed, **clocks_from_sysfs()}
        else:
            parsed["clocks_source"] = "jetson_clocks --show"
        info.update(parsed)
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for the terminal: CPU, GPU and library versions."""
    parts = [f"CPU {info.get('cpu_model') or '?'} ({info.get('affinity_cpus')} usable threads)"]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']} driver {info.get('driver')} CUDA {info.get('cuda_driver_version') or '?'}")
    else:
        parts.append("no NVIDIA GPU")
    parts.append(f"ORT {info.get('onnxruntime') or '-'}, TensorRT {info.get('tensorrt') or '-'}")
    if info.get("jetson"):
        parts.append(f"Jetson {info.get('l4t')} power mode {info.get('power_mode')} "
                     f"clocks locked {info.get('clocks_locked')}")
    return "; ".join(parts)
