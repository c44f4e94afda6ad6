"""TensorRT engine builds from the bundle's ONNX files, for TensorRT 10.x and 11.x (Python API).

- FP16 and INT8 (Q/DQ) graphs: strongly typed networks (precision comes from the graph). TensorRT 11
  is always strongly typed (the flag is deprecated and ignored there); on 10.x we pass STRONGLY_TYPED.
- FP32 graph: a plain build; on 10.x additionally the classic ``BuilderFlag.FP16`` build
  (``model_fp32_trtfp16.engine``), a flag that 11.x removed.
- A timing cache is loaded from / saved to ``timing.cache`` next to the engines.
- Dynamic inputs get one optimization profile from ``profile_plan``.
TensorRT is imported lazily; without it ``build_engine`` raises a clear ApdError. ``export.build`` drives
the builds for a whole bundle (``apd-edge build``, and ``apd-edge export --trt``).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from ..errors import ApdError
from ..runtime.backends.trt import current_device_info, import_tensorrt

TIMING_CACHE = "timing.cache"


def _round32(v: float, lo: int = 32) -> int:
    return max(lo, int(v) // 32 * 32)


def profile_plan(manifest: dict, *, max_batch: int = 1, min_scale: float = 0.5,
                 max_scale: float = 2.0) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimization-profile shapes ``{input name: (min, opt, max)}`` for the bundle's input.

    Static inputs get min = opt = max = the recorded shape. Dynamic ones: batch 1..``max_batch`` (opt 1),
    height/width from ``min_scale`` to ``max_scale`` times the export size (multiples of 32, opt = size).
    """
    inp = manifest["input"]
    shape = list(inp["shape"])
    H, W = manifest["preprocess"]["size"]
    if max_batch < 1 or not 0 < min_scale <= 1 <= max_scale:
        raise ApdError(f"bad profile request: max_batch={max_batch}, scales {min_scale}..{max_scale}")
    mins, opts, maxs = [], [], []
    for axis, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            mins.append(d), opts.append(d), maxs.append(d)
        elif axis == 0:
            mins.append(1), opts.append(1), maxs.append(max_batch)
        elif axis in (len(shape) - 2, len(shape) - 1):
            ref = H if axis == len(shape) - 2 else W
            mins.append(_round32(ref * min_scale)), opts.append(ref), maxs.append(_round32(ref * max_scale))
        else:
            raise ApdError(f"input '{inp['name']}' has a dynamic axis {axis} apd-edge cannot plan")
    return {inp["name"]: (tuple(mins), tuple(opts), tuple(maxs))}


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def engine_plan(precisions: list[str], trt_version: str) -> list[tuple[str, str, bool, bool]]:
    """Which engines to build: ``[(engine precision, onnx precision, strongly_typed, fp16_flag)]``.

    Pure: FP16/INT8 graphs strongly typed; FP32 plain; on 10.x also FP32 with the FP16 builder flag.
    """
    major = int(str(trt_version).split(".")[0])
    plan = []
    for p in precisions:
        if p == "fp32":
            plan.append(("fp32", "fp32", False, False))
            if major < 11:
                plan.append(("fp32_trtfp16", "fp32", False, True))
        elif p in ("fp16", "int8"):
            plan.append((p, p, True, False))
        else:
            raise ApdError(f"no TensorRT build for precision {p!r}")
    return plan


def build_engine(onnx_path: str | Path, engine_path: str | Path, manifest: dict, *, strongly_typed: bool,
                 fp16_flag: bool = False, workspace_gb: float = 4.0, cache_path: str | Path | None = None,
                 max_batch: int = 1) -> dict:
    """Build one serialized engine; returns its ``engine_meta`` (GPU, compute capability, versions, flags)."""
    from ..runtime.backends.trt_check import create_trt

    trt = import_tensorrt()
    major = trt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = create_trt(trt, "Builder", logger)
    flags = 0
    if strongly_typed and major < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = ""
        fp16_qdq = (manifest.get("quantization") or {}).get("float_precision") == "fp16"
        if fp16_qdq and Path(onnx_path).name.startswith("model_int8"):
            hint = ("; this INT8 graph has FP16 Q/DQ scales (opset 19): if this TensorRT rejects them, re-export with "
                    "--int8-float fp32")
        raise ApdError(f"TensorRT cannot parse {onnx_path}: {errs[:400]}{hint}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    builder_flags = []
    if fp16_flag:
        if major >= 11 or not hasattr(trt.BuilderFlag, "FP16"):
            raise ApdError(f"TensorRT {trt.__version__} has no FP16 builder flag; use the FP16 ONNX (--fp16)")
        config.set_flag(trt.BuilderFlag.FP16)
        builder_flags.append("FP16")
    cache_bytes = Path(cache_path).read_bytes() if cache_path and Path(cache_path).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = profile_plan(manifest, max_batch=max_batch)
    if any(mn != mx for mn, _, mx in plan.values()):
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in plan.items():
            profile.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ApdError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    if cache_path:
        Path(cache_path).write_bytes(bytes(config.get_timing_cache().serialize()))
    info = current_device_info()
    return {**info, "builder_flags": builder_flags, "strongly_typed": bool(strongly_typed or major >= 11),
            "workspace_gb": workspace_gb, "profile": {k: [list(s) for s in v] for k, v in plan.items()},
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
