"""Early, one-line checks before any TensorRT work: the right packages for this machine, a driver, a device.

Each check names the problem and the fix ("no NVIDIA driver", "CUDA 13 bindings on a CUDA 12 driver:
install cuda-python<13", ...). The checks take the imported ``tensorrt`` / ``cuda.bindings.runtime``
modules as arguments, so tests can put modules that are absent, too old or see no device in their place.
Torch-free; imports nothing heavy at module level.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from typing import Any

from ...errors import ApdError

TEGRA_RELEASE = "/etc/nv_tegra_release"
MIN_TRT_MAJOR = 10  # TensorRT 8.x (JetPack 5) lacks the strongly typed builds and the I/O tensor API we use
# pip distributions that carry TensorRT's Python bindings, with the CUDA major they were built for
# (names normalised as pip does: lower case, "-" for "_" and ".")
TRT_DISTS = {"tensorrt-cu12": 12, "tensorrt-cu12-bindings": 12, "tensorrt-cu12-libs": 12,
             "tensorrt-cu13": 13, "tensorrt-cu13-bindings": 13, "tensorrt-cu13-libs": 13}


def on_jetson(path: str = TEGRA_RELEASE) -> bool:
    return os.path.exists(path)


def driver_cuda_major() -> int | None:
    """The driver's CUDA major through cuda-python when it is installed (0: no driver), else None."""
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415
    except ImportError:
        try:
            from cuda import cudart  # noqa: PLC0415
        except ImportError:
            return None
    try:
        err, v = cudart.cudaDriverGetVersion()
    except Exception:  # a broken binding: no hint rather than a second error
        return None
    return int(v) // 1000 if _code(err) == 0 else None


def install_hint(jetson: bool | None = None, driver_major: int | None = None) -> str:
    """How to get TensorRT + cuda-python on this kind of machine."""
    jetson = on_jetson() if jetson is None else jetson
    if driver_major is None and not jetson:
        driver_major = driver_cuda_major()
    if driver_major == 0:
        return ("no NVIDIA driver found on this machine (TensorRT needs an NVIDIA GPU and driver); on a GPU machine: "
                + install_hint(jetson=False, driver_major=-1))
    if jetson:
        return ("on Jetson use JetPack's TensorRT (python3-libnvinfer) from a venv made with --system-site-packages, "
                "plus pip install \"apd-edge[jetson]\" (cuda-python<13)")
    if driver_major in (12, 13):
        return f"pip install \"apd-edge[trt-cu{driver_major}]\" (your driver is CUDA {driver_major})"
    return ("pip install \"apd-edge[trt-cu12]\" for a CUDA 12 driver or \"apd-edge[trt-cu13]\" for CUDA 13 "
            "(nvidia-smi shows the driver's CUDA version)")


def cuda_version(v: int) -> str:
    """CUDA's integer version (12040) as text ("12.4")."""
    return f"{int(v) // 1000}.{int(v) % 1000 // 10}"


def _code(err: Any) -> int:
    return int(getattr(err, "value", err))


def cuda_error_text(cudart, err: Any) -> str:
    """``cudaErrorNoDevice (100): no CUDA-capable device is detected`` from a cuda-python error value."""
    name, text = getattr(err, "name", None), None
    try:
        e2, s = cudart.cudaGetErrorString(err)
        if _code(e2) == 0:
            text = s.decode(errors="replace") if isinstance(s, bytes) else str(s)
    except Exception:  # an old or partial binding: the name and code still identify the error
        pass
    head = f"{name or 'cudaError'} ({_code(err)})"
    return f"{head}: {text}" if text else head


class CudaError(ApdError):
    """A failed CUDA runtime call; the message carries cudaGetErrorString."""

    def __init__(self, what: str, code: int, text: str):
        super().__init__(f"CUDA error in {what}: {text}{_fix_for(code)}")
        self.code = code


def _fix_for(code: int) -> str:
    if code == 35:  # cudaErrorInsufficientDriver
        return " (the NVIDIA driver is older than cuda-python's CUDA: install cuda-python<13 for a CUDA 12 driver)"
    if code == 100:  # cudaErrorNoDevice
        return " (no GPU visible: check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    if code == 2:  # cudaErrorMemoryAllocation
        return " (out of GPU memory)"
    return ""


def check(cudart, res: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; raise CudaError with cudaGetErrorString on failure."""
    err, *vals = res if isinstance(res, tuple) else (res,)
    if _code(err) != 0:
        raise CudaError(what, _code(err), cuda_error_text(cudart, err))
    return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)


def _dist_version(*names: str) -> str | None:
    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_cuda(cudart, jetson: bool | None = None) -> dict:
    """Driver present, driver CUDA >= the bindings' CUDA major, at least one device; returns the versions.

    ``cudaDriverGetVersion`` answers 0 when no driver is installed; ``cudaRuntimeGetVersion`` is the CUDA
    version cuda-python's runtime bindings were built for.
    """
    jetson = on_jetson() if jetson is None else jetson
    drv = int(check(cudart, cudart.cudaDriverGetVersion(), "cudaDriverGetVersion"))
    if drv == 0:
        raise ApdError("no NVIDIA driver: CUDA reports driver version 0 (install the NVIDIA driver"
                       + ("; on Jetson it comes with JetPack" if jetson else "") + "; nvidia-smi must list the GPU)")
    rt = int(check(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
    bindings = _dist_version("cuda-python", "cuda-bindings") or "?"
    if drv // 1000 < rt // 1000:
        raise ApdError(f"CUDA {rt // 1000} bindings (cuda-python {bindings}, CUDA {cuda_version(rt)}) on a CUDA "
                       f"{cuda_version(drv)} driver: install cuda-python<{rt // 1000} "
                       f"(pip install \"cuda-python>={drv // 1000},<{drv // 1000 + 1}\") or update the NVIDIA driver")
    res = cudart.cudaGetDeviceCount()
    err = res[0] if isinstance(res, tuple) else res
    if _code(err) != 0:
        raise ApdError(f"no usable CUDA device: {cuda_error_text(cudart, err)}{_fix_for(_code(err))}")
    n = int(res[1])
    if n == 0:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ApdError("no CUDA device visible" + (f" (CUDA_VISIBLE_DEVICES={vis!r})" if vis is not None else "")
                       + ": check nvidia-smi")
    return {"driver_cuda": cuda_version(drv), "runtime_cuda": cuda_version(rt), "devices": n,
            "cuda_python": bindings}


def trt_cuda_major(dist_names: set[str]) -> int | None:
    """The CUDA major TensorRT's pip wheels were built for, from the installed distribution names."""
    names = (re.sub(r"[-_.]+", "-", d).lower() for d in dist_names)
    found = {TRT_DISTS[n] for n in names if n in TRT_DISTS}
    return max(found) if found else None


def installed_dists() -> set[str]:
    return {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}


def check_tensorrt(trt, driver_major: int | None = None, dists: set[str] | None = None) -> str:
    """TensorRT new enough, and (pip wheels) built for a CUDA major the driver supports; returns its version."""
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise ApdError(f"cannot read TensorRT's version ({version!r})") from None
    if major < MIN_TRT_MAJOR:
        raise ApdError(f"TensorRT {version} is too old: apd-edge builds and runs engines with TensorRT 10.x or 11.x "
                       f"(JetPack 6+ on Jetson; {install_hint(driver_major=driver_major)})")
    want = trt_cuda_major(installed_dists() if dists is None else dists)
    if want is not None and driver_major is not None and want > driver_major:
        raise ApdError(f"TensorRT {version} for CUDA {want} (tensorrt-cu{want}) on a CUDA {driver_major} driver: "
                       f"pip uninstall tensorrt-cu{want} tensorrt-cu{want}-libs tensorrt-cu{want}-bindings, then "
                       f"pip install \"apd-edge[trt-cu{driver_major}]\"")
    return version


def create_trt(trt, kind: str, logger) -> Any:
    """``trt.Builder`` / ``trt.Runtime`` or an ApdError (pybind raises TypeError when creation returns null)."""
    try:
        obj = getattr(trt, kind)(logger)
    except (TypeError, RuntimeError) as exc:
        obj, why = None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    else:
        why = "it returned None"
    if obj is None:
        raise ApdError(f"TensorRT {getattr(trt, '__version__', '?')} cannot create its {kind} ({why}): no usable "
                       "GPU, or TensorRT does not match the driver; nvidia-smi must list the GPU, then "
                       + install_hint())
    return obj


def preflight() -> dict:
    """Import TensorRT and cuda-python and run every check above; returns versions for the log/manifest."""
    from .trt import import_cudart, import_tensorrt

    trt = import_tensorrt()
    cudart = import_cudart()
    info = check_cuda(cudart)
    info["tensorrt"] = check_tensorrt(trt, int(info["driver_cuda"].split(".")[0]))
    return info
