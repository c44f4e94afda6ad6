"""One row: an artifact x backend x precision measured (size, params/GMACs, latency, mIoU, memory), or the
reason it could not be. Nothing here raises for a backend or artifact problem: it becomes the row's reason."""

from __future__ import annotations

from typing import Callable

from ..data.scoring import describe_selection
from ..errors import ApdError
from ..runtime.manifest import find_file
from .accuracy import evaluate_predictor
from .artifacts import Artifact
from .latency import time_row
from .machine import _run
from .options import BenchOptions, first_line
from .report import Row
from .runners import make_runner, preimport
from .timing import HostMemory

FILE_FORMAT = {"ort": "onnx", "trt": "engine"}


def measure_row(art: Artifact, backend: str, precision: str, opts: BenchOptions, echo: Callable = print) -> Row:
    """Measure one artifact x backend x precision; never raises for backend/artifact problems."""
    row = Row(model=art.model, artifact=str(art.bundle or art.path), backend=backend, precision=precision,
              device="cuda" if backend == "trt" and opts.device == "cpu" else opts.device,
              input_size="x".join(str(v) for v in art.manifest["preprocess"]["size"]),
              warmup=opts.warmup, iters=opts.iters, batch=opts.batch)
    from ..runtime import list_backends
    from ..runtime.manifest import int8_gate

    if precision == "int8":
        row.warning = int8_gate(art.manifest) or ""
    try:  # model size and cost belong to the artifact: shown on skipped rows too (torch-free sources only)
        prof = profile(art)
        row.params, row.gmacs, row.profile_source = prof.get("params"), prof.get("gmacs"), prof.get("source", "")
    except Exception:
        pass
    ok, why = list_backends().get(backend, (False, f"unknown backend {backend!r}"))
    if ok and precision == "fp32_trtfp16" and backend != "trt":
        ok, why = False, ("fp32_trtfp16 is a TensorRT 10 engine (the FP32 graph built with the FP16 flag): "
                          "--backends trt")
    if not ok:
        row.status, row.reason = "skipped", why
        return row
    missing = missing_file(art, backend, precision)
    if missing:
        row.status, row.reason = "skipped", missing
        row.size_mb = None
        return row
    row.size_mb = file_size_mb(art, backend, precision)
    gpu_before = gpu_used_mb() if opts.device.startswith("cuda") and backend != "torch" else None
    runner = None
    try:
        preimport(backend)  # library imports are not the model's memory: keep them out of the RSS delta
        with HostMemory() as mem:
            runner = make_runner(art, backend, precision, opts)
            runner.reset_gpu_peak()
            row.threads = runner.threads()
            row.options = runner.options
            if backend == "torch":
                row.size_mb = file_size_mb(art, backend, precision, runner)
            prof = profile(art, runner)
            row.params, row.gmacs, row.profile_source = prof.get("params"), prof.get("gmacs"), prof.get("source", "")
            time_row(row, runner, art, opts)
            accuracy_row(row, runner, art, opts)
        row.host_mem_mb = None if mem.peak_delta_mb is None else round(mem.peak_delta_mb, 1)
        row.host_peak_mb = None if mem.peak_mb is None else round(mem.peak_mb, 1)
        if runner.gpu_peak_mb() is not None:
            row.gpu_mem_mb = round(runner.gpu_peak_mb(), 1)
        elif gpu_before is not None:
            after = gpu_used_mb()
            row.gpu_mem_mb = None if after is None else round(after - gpu_before, 1)
    except ApdError as exc:
        row.status, row.reason = "skipped", first_line(exc)
    except Exception as exc:  # any failure of one row must not stop the others
        row.status, row.reason = "failed", f"{type(exc).__name__}: {first_line(exc)}"
    finally:
        if runner is not None:
            runner.close()
    return row


def accuracy_row(row: Row, runner, art: Artifact, opts: BenchOptions) -> None:
    """mIoU and pixel accuracy of ``runner.predict`` on the artifact's evaluation data (or why there is none)."""
    ev = art.eval
    if ev is None or ev.dataset is None:
        row.eval_data = ev.reason if ev else "no data"
        return
    res = evaluate_predictor(runner.predict, ev.dataset, int(art.manifest["num_classes"]), opts.max_images,
                             extra_classes=art.manifest.get("extra_classes") or ())
    name, _, split = ev.label.partition(":")
    row.miou, row.pixel_acc, row.eval_images = res["miou"], res["acc"], res["n"]
    row.eval_data = describe_selection(name, split, res["n"], res["total"], opts.max_images)


def profile(art: Artifact, runner=None) -> dict:
    """params / GMACs: manifest first, then the fp32 ONNX graph, then the torch model."""
    if art.profile:
        return art.profile
    m = art.manifest
    for d in (m.get("profile"), m.get("model")):
        if isinstance(d, dict) and d.get("params") is not None:
            gm = d.get("gmacs")
            if gm is None and d.get("macs") is not None:
                gm = d["macs"] / 1e9
            art.profile = {"params": int(d["params"]), "gmacs": gm, "source": "manifest"}
            return art.profile
    if art.bundle is not None:
        try:
            fp32 = find_file(m, "onnx", "fp32")  # the plain graph, not a CPU variant
        except ApdError:
            fp32 = None
        if fp32 is not None:
            try:
                from .onnx_profile import onnx_profile

                p = onnx_profile(art.bundle / fp32["path"])
                art.profile = {"params": p["params"], "gmacs": p["gmacs"], "source": "onnx"}
                return art.profile
            except Exception:  # onnx missing or an unusual graph: fall through
                pass
    if runner is not None and getattr(runner, "backend", "") == "torch":
        try:
            gmacs = runner.count_macs() / 1e9
        except Exception:  # a model the hooks cannot run on CPU: params are still known
            gmacs = None
        art.profile = {"params": runner.params, "gmacs": gmacs, "source": "torch"}
        return art.profile
    return {}


def file_size_mb(art: Artifact, backend: str, precision: str, runner=None) -> float | None:
    """The model file's size (torch: the weights in memory), MiB."""
    if backend == "torch":
        return round(runner.weights_mb, 3) if runner is not None else None
    for f in art.manifest.get("files", []):
        if f.get("format") == FILE_FORMAT[backend] and f.get("precision") == precision and not f.get("variant"):
            p = art.bundle / f["path"]
            return round((p.stat().st_size if p.exists() else f.get("bytes", 0)) / 2**20, 3)
    return None


def missing_file(art: Artifact, backend: str, precision: str) -> str | None:
    """A reason when the bundle lacks the file this row needs, else None."""
    if backend == "torch":
        return None
    if art.bundle is None:
        return art.error or "no bundle for this checkpoint"
    fmt = FILE_FORMAT[backend]
    have = [f["precision"] for f in art.manifest.get("files", []) if f.get("format") == fmt]
    if precision not in have:
        what = "TensorRT engine" if fmt == "engine" else "ONNX model"
        hint = f" (build them on the target GPU: apd-edge build {art.bundle})" if fmt == "engine" else ""
        return f"bundle has no {precision} {what}{hint}; has: {', '.join(have) or 'none'}"
    return None


def parse_mem_get_info(res) -> float | None:
    """Used device memory in MiB from cuda-python's ``cudaMemGetInfo()`` result ``(err, free, total)``."""
    try:
        err, free, total = res
    except (TypeError, ValueError):
        return None
    if int(getattr(err, "value", err)) != 0:
        return None
    return (int(total) - int(free)) / 2**20


def gpu_used_mb() -> float | None:
    """Device memory in use, for a before/after delta on ort/trt rows: cuda-python's cudaMemGetInfo when
    installed, else nvidia-smi (whole device, all processes)."""
    try:
        from ..runtime.backends.trt import import_cudart

        return parse_mem_get_info(import_cudart().cudaMemGetInfo())
    except Exception:  # cuda-python missing or no device: fall back to nvidia-smi
        pass
    out = _run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    try:
        return float(out.strip().splitlines()[0]) if out else None
    except (ValueError, IndexError):
        return None
