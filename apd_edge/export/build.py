"""``build_bundle``: TensorRT engines from the ONNX files already in a bundle, on the target, without torch.

This is the device side of deployment (``apd-edge build BUNDLE``): no checkpoint, no dataset, no torch.
Order, so that every problem surfaces before minutes of work:
1. the bundle: manifest, sha256 of each ONNX file, each ONNX model's I/O against the manifest, samples;
2. TensorRT / cuda-python / driver / device checks (one-line errors naming the fix; not for ``dry_run``);
3. ONNX Runtime here against the stored FP32 labels, and the plan: which engines from which ONNX file,
   with which flags and optimization profile (all ``dry_run`` does);
4. each engine: build, record its metadata, measure its parity on the bundle's sample images against
   ONNX Runtime running the ONNX file it was built from; the manifest is saved after every engine.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ApdError
from ..runtime.integrity import backend_io, check_model_io
from ..runtime.manifest import file_entry, load_manifest, save_manifest, verify_file
from ..targets import ONNX_PRECISIONS
from .samples import load_samples, sample_parity
from .tensorrt import TIMING_CACHE, engine_plan, profile_plan

TRT_MAJORS_PLANNED = ("10", "11")  # what --dry-run plans for when TensorRT is not installed
FP32_REPRODUCE = 99.9  # % of stored FP32 labels ONNX Runtime on the device should reproduce


def _onnx_files(manifest: dict) -> dict[str, dict]:
    # a ``variant`` entry (the CPU graphs: model_cpu.onnx, the INT8 twin) is for ONNX Runtime, never for TensorRT
    return {f["precision"]: f for f in manifest["files"] if f["format"] == "onnx" and not f.get("variant")}


def check_bundle(bundle: str | Path, precisions: Sequence[str] | None = None) -> tuple[Path, dict, list[str], dict]:
    """Load and check a bundle for an engine build; returns ``(folder, manifest, precisions, ORT sessions)``.

    ``precisions`` defaults to every ONNX precision in the bundle; asking for one the bundle lacks is an
    error listing what it has. ORT sessions are returned when onnxruntime is installed (else ``{}``).
    """
    path = Path(bundle)
    if path.is_file() and path.suffix in (".pt", ".pth"):
        raise ApdError(f"{path} is a checkpoint: export it first (`apd-edge export {path}` on the training "
                       "machine), then build engines from the bundle folder")
    manifest = load_manifest(path)
    folder = path if path.is_dir() else path.parent
    onnx = _onnx_files(manifest)
    if not onnx:
        raise ApdError(f"bundle {folder} has no ONNX files to build engines from")
    if precisions is None:
        precisions = [p for p in ONNX_PRECISIONS if p in onnx]
    precisions = list(dict.fromkeys(precisions))
    for p in precisions:
        if p not in ONNX_PRECISIONS:
            raise ApdError(f"unknown precision {p!r}; choose from {', '.join(ONNX_PRECISIONS)}")
        if p not in onnx:
            raise ApdError(f"bundle {folder} has no {p} ONNX (has: {', '.join(onnx)}); "
                           f"export it with --{p} on the training machine")
    sessions: dict = {}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnxruntime = None
    for p in precisions:
        entry = onnx[p]
        file = verify_file(folder, entry)
        if onnxruntime is not None:
            from ..runtime.backends.ort import OrtBackend

            sessions[p] = OrtBackend(file, device="cpu")
            check_model_io(manifest, *backend_io(sessions[p]), what=str(file))
    load_samples(folder, manifest)  # sha256 and shape checks now, not after the first engine
    return folder, manifest, precisions, sessions


def plan_engines(manifest: dict, precisions: Sequence[str], trt_version: str, max_batch: int = 1) -> list[dict]:
    """The engines to build, as dicts (engine file, source ONNX, flags, profile). Pure."""
    onnx = _onnx_files(manifest)
    profile = {k: [list(s) for s in v] for k, v in profile_plan(manifest, max_batch=max_batch).items()}
    out = []
    for prec, src, strongly, fp16_flag in engine_plan(list(precisions), trt_version):
        out.append({"engine": f"model_{prec}.engine", "precision": prec, "onnx": onnx[src]["path"],
                    "strongly_typed": bool(strongly or int(str(trt_version).split(".")[0]) >= 11),
                    "builder_flags": ["FP16"] if fp16_flag else [], "profile": profile})
    return out


def format_plan(plan: list[dict], trt_version: str) -> str:
    lines = [f"TensorRT {trt_version}:"]
    for e in plan:
        how = "strongly typed" if e["strongly_typed"] else "plain"
        if e["builder_flags"]:
            how += " + BuilderFlag." + ",".join(e["builder_flags"])
        shapes = "; ".join(f"{k} {' / '.join('x'.join(map(str, s)) for s in v)}" for k, v in e["profile"].items())
        lines.append(f"  {e['engine']:<26} <- {e['onnx']:<18} {how:<28} profile min/opt/max {shapes}")
    return "\n".join(lines)


def _engine_parity(folder: Path, manifest: dict, entry: dict, samples, reference) -> dict:
    from ..runtime.backends.trt import TrtBackend

    be = TrtBackend(folder / entry["path"], entry["engine_meta"])
    try:
        res = sample_parity(be, samples, manifest, reference=reference)
    finally:
        be.close()
    res["reference"] = (f"ONNX Runtime CPU on {entry['engine_meta']['onnx']}" if reference is not None else
                        "stored FP32 labels only (onnxruntime not installed)")
    return res


def build_bundle(bundle: str | Path, precisions: Sequence[str] | None = None, *, workspace_gb: float = 4.0,
                 max_batch: int = 1, dry_run: bool = False, trt_version: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Build the bundle's TensorRT engines on this machine and record them in its manifest.

    ``dry_run``: check the bundle and print the plan (for ``trt_version``, the installed TensorRT, or
    10.x and 11.x when none is installed); builds nothing and needs no GPU. Returns the manifest
    (``dry_run``: ``{trt version: plan}``).
    """
    if workspace_gb <= 0 or max_batch < 1:
        raise ApdError(f"need workspace_gb > 0 and max_batch >= 1 (got {workspace_gb}, {max_batch})")
    folder, manifest, precisions, sessions = check_bundle(bundle, precisions)
    samples = load_samples(folder, manifest)
    info = None
    if not dry_run:  # TensorRT, cuda-python, driver, GPU: one line naming the fix, before any inference
        from ..runtime.backends.trt_check import preflight

        info = preflight()
    if samples is not None and "fp32" in sessions:  # this machine's ORT + preprocessing against the export's
        agree = sample_parity(sessions["fp32"], samples, manifest)["agreement_fp32_labels"]
        log(f"ONNX Runtime here reproduces {agree:.2f}% of the stored FP32 labels"
            + ("" if agree >= FP32_REPRODUCE else f" (under {FP32_REPRODUCE}%: the ONNX Runtime or OpenCV here "
               "differs from the export machine's; engine parity is still measured against ONNX Runtime here)"))
    if dry_run:
        versions = [trt_version] if trt_version else None
        if versions is None:
            try:
                from ..runtime.backends.trt import import_tensorrt

                versions = [import_tensorrt().__version__]
            except ApdError:
                versions = list(TRT_MAJORS_PLANNED)
                log("TensorRT is not installed here: planning for TensorRT 10.x and 11.x")
        plans = {v: plan_engines(manifest, precisions, v, max_batch) for v in versions}
        for v, plan in plans.items():
            log(format_plan(plan, v))
        log(f"bundle {folder}: {len(precisions)} ONNX file(s) checked; "
            + (f"{len(samples[0])} sample images for parity" if samples else "no sample images (parity not measured)"))
        return plans

    from .tensorrt import build_engine

    plan = plan_engines(manifest, precisions, info["tensorrt"], max_batch)
    log(f"TensorRT {info['tensorrt']}, CUDA driver {info['driver_cuda']}, cuda-python {info['cuda_python']}")
    log(format_plan(plan, info["tensorrt"]))
    if samples is None:
        log("warning: this bundle has no samples.npz (exported by an older apd-edge): engine parity not measured")
    for e in plan:
        log(f"building {e['engine']} ...")
        t0 = time.perf_counter()
        meta = build_engine(folder / e["onnx"], folder / e["engine"], manifest, strongly_typed=e["strongly_typed"],
                            fp16_flag=bool(e["builder_flags"]), workspace_gb=workspace_gb,
                            cache_path=folder / TIMING_CACHE, max_batch=max_batch)
        meta.update({"onnx": e["onnx"], "build_seconds": round(time.perf_counter() - t0, 1),
                     "cuda_driver": info["driver_cuda"], "cuda_python": info["cuda_python"]})
        entry = file_entry(folder, e["engine"], "engine", e["precision"], engine_meta=meta)
        if samples is not None:
            src = next(p for p, f in _onnx_files(manifest).items() if f["path"] == e["onnx"])
            meta["parity"] = _engine_parity(folder, manifest, entry, samples, sessions.get(src))
            par = meta["parity"]
            log(f"  {e['engine']}: {meta['build_seconds']} s; vs ONNX Runtime: max|dlogit| "
                f"{par.get('max_abs_diff', float('nan')):.3g}, agreement {par.get('agreement', float('nan')):.2f}%; "
                f"vs FP32 labels {par['agreement_fp32_labels']:.2f}%")
        manifest["files"] = [f for f in manifest["files"] if f["path"] != e["engine"]] + [entry]
        manifest.setdefault("versions", {})["tensorrt"] = info["tensorrt"]
        manifest["engines_built"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        save_manifest(manifest, folder)
    log(f"engines written to {folder}")
    return manifest
