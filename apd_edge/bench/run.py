"""``run_bench``: every artifact x backend x precision measured the same way, one ``Row`` each.

Per row: file size, params/GMACs (manifest, else counted from the ONNX graph, else the torch model),
mIoU on a val split, latency percentiles of ``infer`` alone (compute) and of preprocess + infer +
postprocess (end to end) on a real image, FPS at batch 1 and batch N, peak host RSS growth, GPU
memory, threads. A backend that is unavailable, or a step that fails, becomes a row with its reason.

Clocks: ``time.perf_counter`` around each call; on CUDA the torch backend is timed with CUDA events
(compute) and synchronised wall time (end to end). ONNX Runtime's ``run`` and the TensorRT backend
return host arrays, so their wall time already includes device synchronisation and copies.
Torch is imported only for torch rows or when a checkpoint must be exported.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ApdError
from .accuracy import EvalData, evaluate_predictor, resolve_eval_data
from .machine import _run, describe, machine_info
from ..data.scoring import describe_selection
from .report import Row, precision_notes, print_table, write_all
from .timing import HostMemory, summarize, time_calls, time_interleaved

BACKENDS = ("ort", "trt", "torch")
PRECISIONS = ("fp32", "fp16", "int8", "fp32_trtfp16")
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")  # fp32_trtfp16 is an engine of the FP32 graph, not an ONNX file
FILE_FORMAT = {"ort": "onnx", "trt": "engine"}


@dataclass
class BenchOptions:
    backends: Sequence[str] = ("ort",)
    precisions: Sequence[str] = ("fp32",)
    device: str = "cpu"
    batch: int = 1
    warmup: int = 10
    iters: int = 50
    data: str | None = None
    max_images: int | None = None
    threads: int | None = None
    channels_last: bool = False
    cuda_graph: bool = False
    input_size: tuple[int, int] | None = None
    verify: bool = True
    split: str | None = None  # split scored for mIoU; None = the bundle's val split


# ---------------------------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------------------------


def newest_bundle(export_dir: str | Path = "export") -> Path:
    """The most recently written bundle (a folder with manifest.json) under ``export_dir``."""
    root = Path(export_dir)
    found = [p.parent for p in root.glob("**/manifest.json")] if root.is_dir() else []
    if not found:
        raise ApdError(f"no bundle found under {root}/ (run `apd-edge export CHECKPOINT` or pass a bundle path)")
    return max(found, key=lambda p: (p / "manifest.json").stat().st_mtime)


def artifact_kind(path: Path) -> str:
    """'bundle' (folder with manifest.json) or 'checkpoint' (a .pt file or a run folder)."""
    if path.is_dir() and (path / "manifest.json").is_file():
        return "bundle"
    if path.is_file() and path.name == "manifest.json":
        return "bundle"
    if path.is_dir() and any((path / n).is_file() for n in ("best.pt", "last.pt")):
        return "checkpoint"
    if path.is_file():
        return "checkpoint"
    raise ApdError(f"{path}: not a bundle folder (manifest.json), a checkpoint file, or a run folder")


def _checkpoint_manifest(ckpt: dict, input_size: tuple[int, int] | None) -> dict:
    """A manifest-shaped dict for benchmarking a checkpoint with the torch backend alone."""
    recipe = ckpt.get("recipe") or {}
    size = input_size or (recipe.get("export") or {}).get("input_size") or (recipe.get("train") or {}).get("crop")
    if not size:
        raise ApdError("checkpoint records no input size: pass --input-size H W")
    n = int(ckpt["num_classes"])
    return {
        "name": ckpt.get("model_name", "model"),
        "model": {"name": ckpt.get("model_name", "model")},
        "num_classes": n,
        "classes": list(ckpt.get("classes") or [str(i) for i in range(n)]),
        "extra_classes": list(ckpt.get("extra_classes") or []),
        "palette": ckpt.get("palette") or [],
        "mean": list(ckpt.get("mean") or [0.485, 0.456, 0.406]),
        "std": list(ckpt.get("std") or [0.229, 0.224, 0.225]),
        "preprocess": {"mode": "pad", "size": [int(size[0]), int(size[1])]},
        "recipe": recipe,
        "files": [],
    }


@dataclass
class Artifact:
    path: Path
    kind: str
    manifest: dict
    bundle: Path | None = None
    checkpoint: Path | None = None
    error: str = ""
    eval: EvalData | None = None
    profile: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        m = self.manifest.get("model") or {}
        return str(m.get("name") or self.manifest.get("name") or self.path.name)


def _load_artifact(path: Path, opts: BenchOptions, out: Path, echo: Callable) -> Artifact:
    from ..runtime.manifest import load_manifest

    kind = artifact_kind(path)
    if kind == "bundle":
        bundle = path if path.is_dir() else path.parent
        manifest = load_manifest(bundle)
        src = (manifest.get("source") or {}).get("checkpoint")
        ckpt = Path(src) if src else None
        if ckpt is not None and not ckpt.is_absolute() and not ckpt.exists():
            ckpt = bundle / ckpt
        return Artifact(path, kind, manifest, bundle=bundle, checkpoint=ckpt)
    # A checkpoint: the torch backend reads it directly; ort/trt rows need an exported bundle.
    from ..engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    ckpt_file = path if path.is_file() else next(path / n for n in ("best.pt", "last.pt") if (path / n).is_file())
    art = Artifact(path, kind, _checkpoint_manifest(ckpt, opts.input_size), checkpoint=ckpt_file)
    need = [p for p in opts.precisions if p in EXPORT_PRECISIONS] if any(b != "torch" for b in opts.backends) else []
    if need:
        from ..export import export_bundle
        from ..runtime import list_backends

        build_trt = "trt" in opts.backends and list_backends()["trt"][0]  # else trt rows give the reason
        target = out / "bundles" / f"{ckpt_file.parent.name}_{ckpt_file.stem}"
        echo(f"exporting {ckpt_file} -> {target} ({', '.join(need)})")
        try:
            bundle = export_bundle(ckpt_file, target, input_size=opts.input_size,
                                   precisions=tuple(dict.fromkeys(["fp32", *need])), trt=build_trt)
            art.bundle = Path(bundle)
            art.manifest = load_manifest(art.bundle)
        except Exception as exc:  # export problems become row reasons; torch rows still run
            art.error = f"export failed: {_first_line(exc)}"
    return art


# ---------------------------------------------------------------------------------------------
# Runners (a common face over Segmenter and TorchRunner)
# ---------------------------------------------------------------------------------------------


class SegmenterRunner:
    """Adapts a runtime ``Segmenter`` (ort / trt) to the timing interface."""

    def __init__(self, seg) -> None:
        self.seg = seg
        self.backend = seg.backend
        self.options = ""
        sess = getattr(seg.impl, "session", None)
        self.session = sess
        self.preprocess = seg.preprocess
        self.infer = seg.infer
        self.postprocess = seg.postprocess
        self.predict = seg.predict

    @staticmethod
    def prepare(x: np.ndarray) -> np.ndarray:
        return x

    def sync(self) -> None:  # ORT and the TRT backend return host arrays: already synchronised
        return None

    def static_batch(self) -> int | None:
        """The fixed batch size of the model input, or None when the batch axis is dynamic."""
        if self.session is not None:
            dim0 = self.session.get_inputs()[0].shape[0]
            return dim0 if isinstance(dim0, int) and dim0 > 0 else None
        shape = (self.seg.manifest.get("input") or {}).get("shape")
        if shape and isinstance(shape[0], int):
            return shape[0]
        return None

    def threads(self) -> str:
        if self.session is None:
            return ""
        n = self.session.get_session_options().intra_op_num_threads
        providers = ",".join(p.replace("ExecutionProvider", "") for p in self.session.get_providers())
        return f"ort intra-op {n if n else f'auto({_physical_cores()})'} [{providers}]"


def _physical_cores() -> int:
    try:
        from .machine import parse_cpuinfo

        info = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        return info.get("physical_cores") or info.get("logical_cpus") or os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1


def parse_mem_get_info(res) -> float | None:
    """Used device memory in MiB from cuda-python's ``cudaMemGetInfo()`` result ``(err, free, total)``."""
    try:
        err, free, total = res
    except (TypeError, ValueError):
        return None
    if int(getattr(err, "value", err)) != 0:
        return None
    return (int(total) - int(free)) / 2**20


def _gpu_used_mb() -> float | None:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# ---------------------------------------------------------------------------------------------
# One row
# ---------------------------------------------------------------------------------------------


def _sample_image(art: Artifact) -> np.ndarray:
    """A real val image when there is one (so preprocessing does its real resize), else noise."""
    ds = art.eval.dataset if art.eval else None
    if ds is not None and len(ds):
        return ds[0][0]
    h, w = art.manifest["preprocess"]["size"]
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _profile(art: Artifact, runner=None) -> dict:
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
        fp32 = next((f for f in m.get("files", []) if f.get("format") == "onnx" and f.get("precision") == "fp32"), None)
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


def _make_runner(art: Artifact, backend: str, precision: str, opts: BenchOptions):
    if backend == "torch":
        if art.checkpoint is None:
            raise ApdError("the torch backend needs the source checkpoint; the bundle records none (pass the .pt)")
        if not Path(art.checkpoint).exists():
            raise ApdError(f"source checkpoint {art.checkpoint} not found (pass the .pt as an artifact)")
        from .torch_runner import TorchRunner

        return TorchRunner(art.checkpoint, art.manifest, device=opts.device, precision=precision,
                           channels_last=opts.channels_last, cuda_graph=opts.cuda_graph, threads=opts.threads)
    import warnings

    from ..runtime import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a CPU fallback is reported as the row's reason below
        seg = Segmenter.from_bundle(art.bundle, backend=backend, precision=precision, device=opts.device,
                                    verify=opts.verify, threads=opts.threads)
    runner = SegmenterRunner(seg)
    if backend == "ort" and opts.device.startswith("cuda") and runner.session is not None:
        if runner.session.get_providers() == ["CPUExecutionProvider"]:
            raise ApdError("onnxruntime has no working CUDA/TensorRT provider here (pip install onnxruntime-gpu); "
                           "a CPU run would be mislabelled as cuda")
    return runner


def _file_size_mb(art: Artifact, backend: str, precision: str, runner=None) -> float | None:
    if backend == "torch":
        return round(runner.weights_mb, 3) if runner is not None else None
    for f in art.manifest.get("files", []):
        if f.get("format") == FILE_FORMAT[backend] and f.get("precision") == precision and not f.get("variant"):
            p = art.bundle / f["path"]
            return round((p.stat().st_size if p.exists() else f.get("bytes", 0)) / 2**20, 3)
    return None


def _available_file(art: Artifact, backend: str, precision: str) -> str | None:
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
        prof = _profile(art)
        row.params, row.gmacs, row.profile_source = prof.get("params"), prof.get("gmacs"), prof.get("source", "")
    except Exception:
        pass
    ok, why = list_backends().get(backend, (False, f"unknown backend {backend!r}"))
    if ok and precision == "fp32_trtfp16" and backend != "trt":
        ok, why = False, "fp32_trtfp16 is a TensorRT 10 engine (the FP32 graph built with the FP16 flag): --backends trt"
    if not ok:
        row.status, row.reason = "skipped", why
        return row
    missing = _available_file(art, backend, precision)
    if missing:
        row.status, row.reason = "skipped", missing
        row.size_mb = None
        return row
    row.size_mb = _file_size_mb(art, backend, precision)
    gpu_before = _gpu_used_mb() if opts.device.startswith("cuda") and backend != "torch" else None
    runner = None
    try:
        _preimport(backend)  # library imports are not the model's memory: keep them out of the RSS delta
        with HostMemory() as mem:
            runner = _make_runner(art, backend, precision, opts)
            if hasattr(runner, "reset_gpu_peak"):
                runner.reset_gpu_peak()
            row.threads = runner.threads()
            row.options = getattr(runner, "options", "")
            if backend == "torch":
                row.size_mb = _file_size_mb(art, backend, precision, runner)
            prof = _profile(art, runner)
            row.params, row.gmacs, row.profile_source = prof.get("params"), prof.get("gmacs"), prof.get("source", "")
            _time_row(row, runner, art, opts)
            _accuracy_row(row, runner, art, opts)
        row.host_mem_mb = None if mem.peak_delta_mb is None else round(mem.peak_delta_mb, 1)
        row.host_peak_mb = None if mem.peak_mb is None else round(mem.peak_mb, 1)
        if hasattr(runner, "gpu_peak_mb") and runner.gpu_peak_mb() is not None:
            row.gpu_mem_mb = round(runner.gpu_peak_mb(), 1)
        elif gpu_before is not None:
            after = _gpu_used_mb()
            row.gpu_mem_mb = None if after is None else round(after - gpu_before, 1)
    except ApdError as exc:
        row.status, row.reason = "skipped", _first_line(exc)
    except Exception as exc:  # any failure of one row must not stop the others
        row.status, row.reason = "failed", f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        if runner is not None and hasattr(runner, "close"):
            runner.close()
    return row


def _preimport(backend: str) -> None:
    import importlib

    for mod in {"torch": ("apd_edge.bench.torch_runner",), "ort": ("onnxruntime",),
                "trt": ("tensorrt", "apd_edge.runtime.backends.trt")}.get(backend, ()):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass  # the runner reports the missing package as the row's reason


def _time_row(row: Row, runner, art: Artifact, opts: BenchOptions) -> None:
    img = _sample_image(art)
    x, meta = runner.preprocess(img)
    xin = runner.prepare(x)
    use_events = getattr(runner, "on_cuda", False)

    def e2e() -> None:
        xx, mm = runner.preprocess(img)
        runner.postprocess(runner.infer(runner.prepare(xx)), mm)

    if use_events:  # GPU time of infer alone is below e2e's wall time anyway: two separate blocks
        from .timing import time_cuda_events

        compute = time_cuda_events(lambda: runner.infer(xin), opts.warmup, opts.iters)
        full = time_calls(e2e, max(1, opts.warmup // 2), opts.iters, sync=runner.sync)
        row.timing = "compute: CUDA events; e2e: perf_counter + synchronize"
    else:  # one wall clock for both: interleaved, or load drift between two blocks can put e2e below infer
        got = time_interleaved({"compute": lambda: runner.infer(xin), "e2e": e2e}, opts.warmup, opts.iters,
                               sync=runner.sync)
        compute, full = got["compute"], got["e2e"]
        row.timing = "perf_counter, infer and e2e calls interleaved (host arrays returned: synchronous)"
    impl = getattr(getattr(runner, "seg", None), "impl", None)
    if hasattr(impl, "record_split"):  # TensorRT: host-to-device / compute / device-to-host, as trtexec reports
        impl.splits.clear()
        impl.record_split = True
        try:
            time_calls(lambda: runner.infer(xin), 0, opts.iters)
        finally:
            impl.record_split = False
        split = split_summary(impl.splits)
        row.h2d_p50, row.gpu_compute_p50, row.gpu_compute_p99, row.d2h_p50 = (
            split["h2d_p50"], split["compute_p50"], split["compute_p99"], split["d2h_p50"])
        row.timing += f"; H2D/compute/D2H: CUDA events ({len(impl.splits)} calls)"
    c, e = summarize(compute), summarize(full)
    row.compute_p50, row.compute_p90, row.compute_p99 = (round(c[k], 3) for k in ("p50", "p90", "p99"))
    row.e2e_p50, row.e2e_p90, row.e2e_p99 = (round(e[k], 3) for k in ("p50", "p90", "p99"))
    row.fps_b1 = round(1000.0 / c["mean"], 2)
    if opts.batch > 1:
        static = runner.static_batch() if hasattr(runner, "static_batch") else None
        if static is not None and static != opts.batch:
            row.batch_note = f"static batch {static}"
            return
        xb = runner.prepare(np.repeat(x, opts.batch, axis=0))
        try:
            tb = time_calls(lambda: runner.infer(xb), max(1, opts.warmup // 2), max(3, opts.iters // 2),
                            sync=runner.sync)
            row.fps_batch = round(opts.batch * 1000.0 / summarize(tb)["mean"], 2)
        except Exception as exc:
            row.batch_note = f"batch {opts.batch} failed: {_first_line(exc)[:80]}"


def split_summary(splits: Sequence[tuple[float, float, float]]) -> dict[str, float | None]:
    """p50 of host-to-device and device-to-host copies and p50/p99 of GPU compute, in ms (3 decimals)."""
    if not splits:
        return {"h2d_p50": None, "compute_p50": None, "compute_p99": None, "d2h_p50": None}
    h2d, comp, d2h = ([s[i] for s in splits] for i in range(3))
    s = {"h2d_p50": summarize(h2d)["p50"], "compute_p50": summarize(comp)["p50"],
         "compute_p99": summarize(comp)["p99"], "d2h_p50": summarize(d2h)["p50"]}
    return {k: round(v, 3) for k, v in s.items()}


def _accuracy_row(row: Row, runner, art: Artifact, opts: BenchOptions) -> None:
    ev = art.eval
    if ev is None or ev.dataset is None:
        row.eval_data = ev.reason if ev else "no data"
        return
    res = evaluate_predictor(runner.predict, ev.dataset, int(art.manifest["num_classes"]), opts.max_images,
                             extra_classes=art.manifest.get("extra_classes") or ())
    name, _, split = ev.label.partition(":")
    row.miou, row.pixel_acc, row.eval_images = res["miou"], res["acc"], res["n"]
    row.eval_data = describe_selection(name, split, res["n"], res["total"], opts.max_images)


# ---------------------------------------------------------------------------------------------
# Whole run
# ---------------------------------------------------------------------------------------------


def _check(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    from ..errors import unknown_name

    out = []
    for v in values:
        v = v.strip().lower()
        if v and v not in allowed:
            raise unknown_name(what, v, allowed)
        if v and v not in out:
            out.append(v)
    if not out:
        raise ApdError(f"no {what} given")
    return out


def run_bench(artifacts: Sequence[str | Path] | None = None, backends: Sequence[str] = ("ort",),
              precisions: Sequence[str] = ("fp32",), device: str = "cpu", batch: int = 1, warmup: int = 10,
              iters: int = 50, data: str | None = None, out: str | Path | None = None,
              max_images: int | None = None, threads: int | None = None, channels_last: bool = False,
              cuda_graph: bool = False, input_size: tuple[int, int] | None = None, export_dir: str | Path = "export",
              verify: bool = True, echo: Callable[[str], None] = print, write: bool = True,
              show_table: bool = True, split: str | None = None) -> list[Row]:
    """Benchmark artifacts (bundle folders or checkpoints; default the newest bundle in ``export_dir``).

    Writes bench.json / bench.csv / bench.png to ``out`` (default: the first bundle's folder) and
    prints the table. Checkpoints benchmarked on ort/trt are exported first, into ``<out>/bundles/``. Returns the rows, including skipped/failed ones with their reasons.
    """
    backends = _check(backends, BACKENDS, "backend")
    precisions = _check(precisions, PRECISIONS, "precision")
    if batch < 1 or iters < 1 or warmup < 0:
        raise ApdError(f"need --batch >= 1, --iters >= 1, --warmup >= 0 (got {batch}, {iters}, {warmup})")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ApdError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    paths = [Path(a) for a in artifacts] if artifacts else [newest_bundle(export_dir)]
    for p in paths:
        if not p.exists():
            raise ApdError(f"artifact not found: {p}")
    opts = BenchOptions(backends, precisions, device, batch, warmup, iters, data, max_images, threads,
                        channels_last, cuda_graph, tuple(input_size) if input_size else None, verify, split)
    out_dir = Path(out) if out else None
    rows: list[Row] = []
    machine = machine_info()
    echo(describe(machine))
    for path in paths:
        scratch = out_dir or (path if artifact_kind(path) == "bundle" and path.is_dir() else path.parent)
        try:
            art = _load_artifact(path, opts, scratch, echo)
        except Exception as exc:
            rows.append(Row(model=path.name, artifact=str(path), backend="-", precision="-", device=device,
                            status="failed", reason=_first_line(exc)))
            continue
        out_dir = out_dir or (art.bundle or art.path.parent)
        art.eval = resolve_eval_data(art.manifest, data, split)
        for backend in backends:
            for precision in precisions:
                t0 = time.perf_counter()
                row = measure_row(art, backend, precision, opts, echo)
                rows.append(row)
                status = row.status if row.ok else f"{row.status}: {row.reason}"
                echo(f"  {row.model} {backend}/{precision}: {status} ({time.perf_counter() - t0:.1f} s)")
    if show_table:
        print_table(rows, title="apd-edge bench")
        for scored in dict.fromkeys(r.eval_data for r in rows if r.ok and r.eval_images):
            echo(f"mIoU on {scored}")
        for note in precision_notes(rows):
            echo(f"note: {note}")
    if write:
        out_dir = out_dir or Path(".")
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()}
        settings["artifacts"] = [str(p) for p in paths]
        files = write_all(rows, out_dir, machine, settings)
        echo("wrote " + ", ".join(str(p) for p in files.values()))
        if "png" not in files:
            from .report import PLOT_SKIPPED

            echo(PLOT_SKIPPED)
    return rows


def load_rows(path: str | Path) -> list[Row]:
    """Rows back from a bench.json."""
    from .report import row_from_dict

    return [row_from_dict(r) for r in json.loads(Path(path).read_text())["rows"]]
