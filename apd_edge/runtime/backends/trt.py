"""TensorRT backend: deserialize an engine, check it was built for this GPU/TensorRT, run it on a stream.

Buffers: pinned host memory and device memory through cuda-python (``cuda.bindings.runtime``), allocated
once and reused across calls (grown when a dynamic input gets bigger). ``check_engine_compat`` and
``binding_plan`` are pure functions, tested without TensorRT. TensorRT and cuda-python are imported
lazily, only when an engine is loaded.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ApdError

TRT_MISSING = "TensorRT is not installed"
CUDA_MISSING = "cuda-python is not installed"


def import_tensorrt():
    from .trt_check import install_hint

    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise ApdError(f"{TRT_MISSING}: {install_hint()} ({exc})") from None
    except OSError as exc:  # the wheel is there but its CUDA/TensorRT libraries cannot be loaded
        raise ApdError(f"TensorRT is installed but its libraries cannot be loaded ({exc}): {install_hint()}") from None
    return trt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            from .trt_check import install_hint

            raise ApdError(f"{CUDA_MISSING}: {install_hint()} ({exc})") from None
    return cudart


def _version3(v: str) -> tuple[str, ...]:
    return tuple(str(v).split("+")[0].split(".")[:3])


def check_engine_compat(meta: dict | None, current: dict) -> None:
    """Refuse an engine built for another GPU model, compute capability or TensorRT version.

    ``meta`` is the ``engine_meta`` recorded at build time; ``current`` has the same keys for this
    machine (``gpu_name``, ``compute_capability``, ``tensorrt_version``). Raises ApdError, else None.
    """
    if not meta:
        raise ApdError("engine has no recorded engine_meta (GPU, compute capability, TensorRT version); "
                       "rebuild it with `apd-edge build BUNDLE` on this machine")
    problems = []
    if meta.get("compute_capability") != current.get("compute_capability"):
        problems.append(f"compute capability {meta.get('compute_capability')} "
                        f"vs {current.get('compute_capability')} here")
    if str(meta.get("gpu_name", "")).strip() != str(current.get("gpu_name", "")).strip():
        problems.append(f"GPU '{meta.get('gpu_name')}' vs '{current.get('gpu_name')}' here")
    if _version3(meta.get("tensorrt_version", "?")) != _version3(current.get("tensorrt_version", "?")):
        problems.append(f"TensorRT {meta.get('tensorrt_version')} vs {current.get('tensorrt_version')} here")
    if problems:
        raise ApdError("TensorRT engine was built for another machine (" + "; ".join(problems) +
                       "); engines are specific to the GPU model and TensorRT version: rebuild it here with "
                       "`apd-edge build BUNDLE` or use the ONNX files with --backend ort")


def io_from_manifest(manifest: dict) -> list[dict]:
    """The bundle's I/O description as ``[{name, mode, dtype, shape}]`` (shape may hold -1 or symbols)."""
    inp = manifest["input"]
    io = [{"name": inp["name"], "mode": "input", "dtype": inp.get("dtype", "float32"), "shape": list(inp["shape"])}]
    for o in manifest["outputs"]:
        io.append({"name": o["name"], "mode": "output", "dtype": o["dtype"], "shape": list(o["shape"])})
    return io


def binding_plan(io: list[dict], input_shape: tuple[int, ...]) -> list[tuple[str, str, tuple[int, ...], str, int]]:
    """Resolve every tensor's shape for one input shape: ``[(name, mode, shape, dtype, nbytes)]``.

    Dynamic dims are ``-1`` or symbols ("N", "H", "W"). Symbols take the value they have in the input;
    a ``-1`` in an output takes, by position, the input's batch (first axis) or height/width (last two).
    """
    inputs = [t for t in io if t["mode"] == "input"]
    if len(inputs) != 1:
        raise ApdError(f"expected one input tensor, got {len(inputs)}")
    inp = inputs[0]
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != len(inp["shape"]):
        raise ApdError(f"input '{inp['name']}' has rank {len(inp['shape'])}, got shape {input_shape}")
    symbols: dict[str, int] = {}
    for want, got in zip(inp["shape"], input_shape):
        if isinstance(want, str):
            if symbols.setdefault(want, got) != got:
                raise ApdError(f"input dim '{want}' given two values")
        elif want != -1 and want != got:
            raise ApdError(f"input '{inp['name']}' expects shape {inp['shape']}, got {list(input_shape)}")
    n, h, w = input_shape[0], input_shape[-2], input_shape[-1]
    plan = []
    for t in io:
        if t["mode"] == "input":
            shape = input_shape
        else:
            dims = list(t["shape"])
            out = []
            for i, d in enumerate(dims):
                if isinstance(d, str):
                    if d not in symbols:
                        raise ApdError(f"output '{t['name']}' uses dim '{d}' that the input does not define")
                    out.append(symbols[d])
                elif d == -1:
                    if i == 0:
                        out.append(n)
                    elif i == len(dims) - 2:
                        out.append(h)
                    elif i == len(dims) - 1:
                        out.append(w)
                    else:
                        raise ApdError(f"output '{t['name']}' has an unresolvable dynamic dim at axis {i}")
                else:
                    out.append(int(d))
            shape = tuple(out)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(t["dtype"]).itemsize
        plan.append((t["name"], t["mode"], shape, np.dtype(t["dtype"]).name, nbytes))
    return plan


def _ck(res: Any, what: str = "a CUDA call") -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising an ApdError with cudaGetErrorString on error."""
    from .trt_check import check

    return check(import_cudart(), res, what)


def check_profile_shape(name: str, shape: tuple[int, ...], profile: list | tuple) -> None:
    """Refuse an input shape outside the engine's optimization profile ``(min, opt, max)``, naming the range."""
    mn, _, mx = (tuple(int(d) for d in s) for s in profile)
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(mn) or any(not lo <= d <= hi for d, lo, hi in zip(shape, mn, mx)):
        raise ApdError(f"input '{name}' shape {list(shape)} is outside the engine's optimization profile: "
                       f"min {list(mn)}, max {list(mx)} (rebuild with a wider profile, or resize the input)")


def current_device_info(device: int = 0) -> dict:
    """``gpu_name``, ``compute_capability`` and ``tensorrt_version`` of this machine (needs CUDA + TRT)."""
    trt = import_tensorrt()
    cudart = import_cudart()
    prop = _ck(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu_name": name.strip("\x00 ").strip(), "compute_capability": f"{prop.major}.{prop.minor}",
            "tensorrt_version": trt.__version__}


class TrtBackend:
    """Runs a serialized TensorRT engine; ``infer`` returns every output by name (host numpy copies)."""

    name = "trt"

    def __init__(self, engine_path: str | Path, engine_meta: dict | None, device: str = "cuda"):
        from .trt_check import check_cuda, check_tensorrt, create_trt

        trt = import_tensorrt()
        self.cudart = cudart = import_cudart()
        info = check_cuda(cudart)  # one line naming the driver/bindings/device problem, before any CUDA work
        check_tensorrt(trt, int(info["driver_cuda"].split(".")[0]))
        dev = int(device.split(":")[1]) if ":" in device else 0
        _ck(cudart.cudaSetDevice(dev), f"cudaSetDevice({dev})")
        check_engine_compat(engine_meta, current_device_info(dev))
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = create_trt(trt, "Runtime", self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ApdError(f"TensorRT could not deserialize {engine_path} (see the TensorRT log above)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ApdError(f"TensorRT could not create an execution context for {engine_path} (out of GPU memory?)")
        self.stream = _ck(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.io = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = "input" if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name
            self.io.append({"name": name, "mode": mode, "dtype": dtype,
                            "shape": list(self.engine.get_tensor_shape(name))})
        self.input_name = next(t["name"] for t in self.io if t["mode"] == "input")
        self.output_names = [t["name"] for t in self.io if t["mode"] == "output"]
        self._dynamic = any(d == -1 for t in self.io if t["mode"] == "input" for d in t["shape"])
        self._buf: dict[str, tuple[int, int, int]] = {}  # name -> (capacity bytes, host ptr, device ptr)
        # trtexec-style split: while ``record_split`` is set, each ``infer`` appends (H2D, compute, D2H) ms
        self.record_split = False
        self.splits: list[tuple[float, float, float]] = []
        self._events: list = []

    def _event(self, i: int):
        while len(self._events) <= i:
            self._events.append(_ck(self.cudart.cudaEventCreate(), "cudaEventCreate"))
        ev = self._events[i]
        _ck(self.cudart.cudaEventRecord(ev, self.stream), "cudaEventRecord")
        return ev

    def _ensure(self, name: str, nbytes: int) -> tuple[int, int]:
        cap, host, devp = self._buf.get(name, (0, 0, 0))
        if nbytes > cap:
            if cap:
                _ck(self.cudart.cudaFreeHost(host), "cudaFreeHost")
                _ck(self.cudart.cudaFree(devp), "cudaFree")
            host = int(_ck(self.cudart.cudaHostAlloc(nbytes, getattr(self.cudart, "cudaHostAllocDefault", 0)),
                           f"cudaHostAlloc({nbytes})"))
            devp = int(_ck(self.cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))
            self._buf[name] = (nbytes, host, devp)
        return host, devp

    @staticmethod
    def _view(ptr: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        raw = (ctypes.c_byte * n).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def infer(self, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        cudart = self.cudart
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._dynamic:
            profile = self.engine.get_tensor_profile_shape(self.input_name, 0)
            check_profile_shape(self.input_name, x.shape, profile)
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                mn, _, mx = profile
                raise ApdError(f"TensorRT refused input shape {list(x.shape)} for '{self.input_name}' "
                               f"(profile min {list(mn)}, max {list(mx)})")
        plan = binding_plan(self.io, x.shape)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        views = {}
        for name, mode, shape, dtype, nbytes in plan:
            if mode == "output":  # trust the engine's resolved shape when it has one
                got = tuple(self.context.get_tensor_shape(name))
                if all(d >= 0 for d in got) and got != shape:
                    shape, nbytes = got, int(np.prod(got, dtype=np.int64)) * np.dtype(dtype).itemsize
            host, devp = self._ensure(name, max(nbytes, 1))
            views[name] = (self._view(host, shape, dtype), devp, nbytes, mode)
            self.context.set_tensor_address(name, devp)
        hx, dx, nx, _ = views[self.input_name]
        hx[...] = x
        split = self.record_split
        ev = [self._event(0)] if split else []
        _ck(cudart.cudaMemcpyAsync(dx, hx.ctypes.data, nx, h2d, self.stream), "cudaMemcpyAsync (host to device)")
        if split:
            ev.append(self._event(1))
        if not self.context.execute_async_v3(int(self.stream)):
            raise ApdError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        if split:
            ev.append(self._event(2))
        names = outputs or self.output_names
        for name in names:
            hv, dv, nb, _ = views[name]
            _ck(cudart.cudaMemcpyAsync(hv.ctypes.data, dv, nb, d2h, self.stream), "cudaMemcpyAsync (device to host)")
        if split:
            ev.append(self._event(3))
        _ck(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        if split:
            self.splits.append(tuple(float(_ck(cudart.cudaEventElapsedTime(a, b), "cudaEventElapsedTime"))
                                     for a, b in zip(ev, ev[1:])))
        return {name: views[name][0].copy() for name in names}

    def close(self) -> None:
        for _, host, devp in self._buf.values():
            self.cudart.cudaFreeHost(host)
            self.cudart.cudaFree(devp)
        self._buf.clear()
        for e in getattr(self, "_events", []):
            self.cudart.cudaEventDestroy(e)
        self._events = []
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
