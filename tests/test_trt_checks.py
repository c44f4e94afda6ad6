"""Early TensorRT / CUDA checks and their one-line texts; the trtexec-style split; Jetson clocks from sysfs.

The CUDA and TensorRT modules are replaced only at the boundary (the handful of calls the checks make) to
simulate "absent", "wrong major" and "no device"; nothing here fakes an engine or a measurement.
"""

from __future__ import annotations

import enum
import sys
from types import SimpleNamespace

import pytest

from apd_edge.errors import ApdError
from apd_edge.runtime.backends import trt_check
from apd_edge.runtime.backends.trt import check_profile_shape, import_cudart, import_tensorrt
from apd_edge.runtime.backends.trt_check import (check, check_cuda, check_tensorrt, create_trt, cuda_error_text,
                                                 install_hint, trt_cuda_major)


class Err(enum.IntEnum):  # the shape of cuda-python's cudaError_t
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


STRINGS = {0: b"no error", 2: b"out of memory", 35: b"CUDA driver version is insufficient for CUDA runtime version",
           100: b"no CUDA-capable device is detected"}


def cudart(driver: int = 12040, runtime: int = 12090, devices: int | Err = 1):
    """cuda.bindings.runtime's answers for one machine: driver and bindings versions, device count."""
    def count():
        return (devices, None) if isinstance(devices, Err) else (Err.cudaSuccess, devices)

    return SimpleNamespace(
        cudaDriverGetVersion=lambda: (Err.cudaSuccess, driver),
        cudaRuntimeGetVersion=lambda: (Err.cudaSuccess, runtime),
        cudaGetDeviceCount=count,
        cudaGetErrorString=lambda e: (Err.cudaSuccess, STRINGS[int(e)]))


def test_cuda_ok_and_versions():
    info = check_cuda(cudart(), jetson=False)
    assert info["driver_cuda"] == "12.4" and info["runtime_cuda"] == "12.9" and info["devices"] == 1


def test_no_driver():
    with pytest.raises(ApdError, match=r"^no NVIDIA driver: CUDA reports driver version 0") as e:
        check_cuda(cudart(driver=0), jetson=True)
    assert "on Jetson it comes with JetPack" in str(e.value) and "\n" not in str(e.value)


def test_cuda13_bindings_on_cuda12_driver():
    with pytest.raises(ApdError) as e:
        check_cuda(cudart(driver=12020, runtime=13000), jetson=False)
    msg = str(e.value)
    assert msg.startswith("CUDA 13 bindings (cuda-python ")
    assert "on a CUDA 12.2 driver: install cuda-python<13" in msg and 'pip install "cuda-python>=12,<13"' in msg


def test_no_device():
    with pytest.raises(ApdError, match="no usable CUDA device: cudaErrorNoDevice \\(100\\): no CUDA-capable device is "
                                       "detected \\(no GPU visible: check nvidia-smi and CUDA_VISIBLE_DEVICES\\)"):
        check_cuda(cudart(devices=Err.cudaErrorNoDevice), jetson=False)
    with pytest.raises(ApdError, match="no CUDA device visible \\(CUDA_VISIBLE_DEVICES=''\\)"):
        import os

        old = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        try:
            check_cuda(cudart(devices=0), jetson=False)
        finally:
            (os.environ.pop("CUDA_VISIBLE_DEVICES") if old is None
             else os.environ.__setitem__("CUDA_VISIBLE_DEVICES", old))


def test_cuda_errors_carry_error_string():
    rt = cudart()
    assert cuda_error_text(rt, Err.cudaErrorInsufficientDriver) == (
        "cudaErrorInsufficientDriver (35): CUDA driver version is insufficient for CUDA runtime version")
    with pytest.raises(ApdError) as e:
        check(rt, (Err.cudaErrorInsufficientDriver, None), "cudaSetDevice(0)")
    assert str(e.value).startswith("CUDA error in cudaSetDevice(0): cudaErrorInsufficientDriver (35): CUDA driver "
                                   "version is insufficient") and "install cuda-python<13" in str(e.value)
    assert check(rt, (Err.cudaSuccess, 7), "x") == 7 and check(rt, (Err.cudaSuccess, 1, 2), "x") == (1, 2)


def test_real_cuda_bindings_without_driver():
    """Where cuda-python is installed on a machine without an NVIDIA driver (this project's CI), the real
    bindings give the 'no NVIDIA driver' line, not a CUDA error code."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        pytest.skip("cuda-python not installed")
    err, drv = rt.cudaDriverGetVersion()
    if drv != 0:
        pytest.skip(f"an NVIDIA driver is present (CUDA {drv})")
    with pytest.raises(ApdError, match="^no NVIDIA driver"):
        check_cuda(rt, jetson=False)
    assert "cudaErrorInsufficientDriver (35): CUDA driver version is insufficient" in cuda_error_text(
        rt, rt.cudaError_t.cudaErrorInsufficientDriver)


def test_tensorrt_versions():
    assert check_tensorrt(SimpleNamespace(__version__="10.3.0.30"), 12, dists=set()) == "10.3.0.30"  # JetPack
    assert check_tensorrt(SimpleNamespace(__version__="11.4.0.106"), 13, dists={"tensorrt-cu13"}) == "11.4.0.106"
    with pytest.raises(ApdError, match=r"^TensorRT 8.5.2.2 is too old: apd-edge builds and runs engines with "
                                       r"TensorRT 10.x or 11.x"):
        check_tensorrt(SimpleNamespace(__version__="8.5.2.2"), 11, dists=set())
    with pytest.raises(ApdError) as e:
        check_tensorrt(SimpleNamespace(__version__="11.4.0.106"), 12, dists={"tensorrt-cu13", "numpy"})
    assert str(e.value).startswith("TensorRT 11.4.0.106 for CUDA 13 (tensorrt-cu13) on a CUDA 12 driver")
    assert 'pip install "apd-edge[trt-cu12]"' in str(e.value)
    assert trt_cuda_major({"tensorrt_cu12_bindings", "x"}) == 12 and trt_cuda_major({"tensorrt"}) is None
    assert trt_cuda_major({"TensorRT_CU13"}) == 13


def test_builder_that_cannot_be_created_is_an_apd_error():
    class Trt:
        __version__ = "10.3.0"

        @staticmethod
        def Builder(logger):
            raise TypeError("pybind11::init(): factory function returned nullptr")

        @staticmethod
        def Runtime(logger):
            return None

    with pytest.raises(ApdError, match=r"^TensorRT 10.3.0 cannot create its Builder \(pybind11::init\(\): factory "
                                       r"function returned nullptr\): no usable GPU"):
        create_trt(Trt, "Builder", None)
    with pytest.raises(ApdError, match=r"cannot create its Runtime \(it returned None\)"):
        create_trt(Trt, "Runtime", None)


def test_missing_packages_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # None in sys.modules: `import tensorrt` raises ImportError
    monkeypatch.setattr(trt_check, "on_jetson", lambda path=None: False)
    monkeypatch.setattr(trt_check, "driver_cuda_major", lambda: 12)
    with pytest.raises(ApdError, match=r'^TensorRT is not installed: pip install "apd-edge\[trt-cu12\]" \(your driver '
                                       r'is CUDA 12\)'):
        import_tensorrt()
    monkeypatch.setattr(trt_check, "on_jetson", lambda path=None: True)
    with pytest.raises(ApdError, match=r"on Jetson use JetPack's TensorRT \(python3-libnvinfer\) from a venv made with "
                                       r"--system-site-packages"):
        import_tensorrt()
    for mod in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ApdError, match=r"^cuda-python is not installed: on Jetson"):
        import_cudart()
    assert 'apd-edge[trt-cu13]' in install_hint(jetson=False, driver_major=-1)
    assert install_hint(jetson=False, driver_major=0).startswith("no NVIDIA driver found on this machine")


def test_profile_range_reported():
    profile = ([1, 3, 192, 224], [1, 3, 384, 480], [4, 3, 768, 960])
    check_profile_shape("input", (2, 3, 384, 480), profile)
    with pytest.raises(ApdError, match=r"input 'input' shape \[1, 3, 1024, 480\] is outside the engine's optimization "
                                       r"profile: min \[1, 3, 192, 224\], max \[4, 3, 768, 960\]"):
        check_profile_shape("input", (1, 3, 1024, 480), profile)
    with pytest.raises(ApdError, match="outside"):
        check_profile_shape("input", (1, 3, 384), profile)


def test_split_summary():
    from apd_edge.bench.run import split_summary

    s = split_summary([(0.1, 2.0, 0.3), (0.2, 4.0, 0.5), (0.3, 3.0, 0.4)])
    assert s == {"h2d_p50": 0.2, "compute_p50": 3.0, "compute_p99": 3.98, "d2h_p50": 0.4}
    assert split_summary([])["compute_p50"] is None


def test_split_in_table():
    from apd_edge.bench.report import Row, table_rows

    r = Row(model="m", artifact="a", backend="trt", precision="int8", compute_p50=1.0, h2d_p50=0.12,
            gpu_compute_p50=0.8, gpu_compute_p99=0.9, d2h_p50=0.05)
    assert table_rows([r])[1][0][-1] == "H2D 0.120 / GPU 0.800 / D2H 0.050 ms"


def _sysfs(root, cpus, gpu):
    for i, (lo, hi) in enumerate(cpus):
        d = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_min_freq").write_text(f"{lo}\n")
        (d / "scaling_max_freq").write_text(f"{hi}\n")
    d = root / "sys/class/devfreq/17000000.ga10b"
    d.mkdir(parents=True)
    (d / "min_freq").write_text(f"{gpu[0]}\n")
    (d / "max_freq").write_text(f"{gpu[1]}\n")
    (d / "cur_freq").write_text(f"{gpu[1]}\n")
    (root / "sys/class/devfreq/other.emc").mkdir()


def test_jetson_clocks_from_sysfs(tmp_path):
    from apd_edge.bench.machine import clocks_from_sysfs, parse_nvpmodel_status

    locked, free = tmp_path / "locked", tmp_path / "free"
    _sysfs(locked, [(2201600, 2201600)] * 2, (1300500000, 1300500000))
    _sysfs(free, [(115200, 2201600), (2201600, 2201600)], (306000000, 1300500000))
    assert clocks_from_sysfs(locked) == {"clocks_locked": True, "gpu_freq_hz": 1300500000, "clocks_source": "sysfs"}
    assert clocks_from_sysfs(free)["clocks_locked"] is False
    assert clocks_from_sysfs(tmp_path / "none")["clocks_locked"] is None
    assert parse_nvpmodel_status("pmode:0002 fmode:quiet\n") == 2 and parse_nvpmodel_status("") is None
