"""Bundle integrity on load: the manifest must describe the model file it sits next to. Torch-free.

A manifest copied from another export (other classes, other input size) would otherwise run with a wrong
legend or fail deep inside pre/postprocessing; this check refuses it with one line before any inference.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ApdError

Dims = Sequence[Any]  # ints for static axes; -1, None or a symbol for dynamic ones


def _static(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and d > 0


def check_model_io(manifest: dict, inputs: Sequence[tuple[str, Dims]], outputs: Sequence[tuple[str, Dims]],
                   what: str) -> None:
    """Compare a model's I/O (``[(name, shape)]``, from ONNX Runtime or a TensorRT engine) with the manifest.

    Checks the input name, its channel count and (static) H x W against ``preprocess.size``, that every
    manifest output exists, and that the logits carry ``num_classes`` channels. Raises ApdError.
    """
    fix = "the manifest does not belong to this model (re-export the bundle, or copy the whole folder)"
    inp = manifest["input"]
    if len(inputs) != 1:
        raise ApdError(f"{what}: expected one input, the model has {len(inputs)}; {fix}")
    name, shape = inputs[0]
    shape = list(shape)
    if name != inp["name"]:
        raise ApdError(f"{what}: model input is '{name}' but the manifest says '{inp['name']}'; {fix}")
    if len(shape) != 4:
        raise ApdError(f"{what}: model input '{name}' has rank {len(shape)}, expected N x 3 x H x W; {fix}")
    if _static(shape[1]) and shape[1] != 3:
        raise ApdError(f"{what}: model input has {shape[1]} channels, expected 3 (RGB); {fix}")
    H, W = manifest["preprocess"]["size"]
    if _static(shape[2]) and _static(shape[3]) and (shape[2], shape[3]) != (H, W):
        raise ApdError(f"{what}: model input is {shape[2]}x{shape[3]} but the manifest's preprocess.size is "
                       f"{H}x{W}; {fix}")
    have = {n: list(s) for n, s in outputs}
    n_cls = int(manifest["num_classes"])
    for o in manifest["outputs"]:
        if o["name"] not in have:
            raise ApdError(f"{what}: the manifest lists output '{o['name']}' but the model has only "
                           f"{', '.join(have) or 'none'}; {fix}")
        if o.get("kind") == "logits":
            s = have[o["name"]]
            if len(s) != 4:
                raise ApdError(f"{what}: logits output '{o['name']}' has rank {len(s)}, expected N x C x H x W; {fix}")
            if _static(s[1]) and s[1] != n_cls:
                raise ApdError(f"{what}: the model outputs {s[1]} classes but the manifest lists {n_cls} "
                               f"(num_classes, classes, palette); {fix}")


def backend_io(impl: Any) -> tuple[list[tuple[str, list]], list[tuple[str, list]]] | None:
    """``(inputs, outputs)`` of an ORT session or a TensorRT backend, or None for backends without I/O info."""
    sess = getattr(impl, "session", None)
    if sess is not None:
        return ([(i.name, list(i.shape)) for i in sess.get_inputs()],
                [(o.name, list(o.shape)) for o in sess.get_outputs()])
    io = getattr(impl, "io", None)
    if io:
        return ([(t["name"], list(t["shape"])) for t in io if t["mode"] == "input"],
                [(t["name"], list(t["shape"])) for t in io if t["mode"] == "output"])
    return None
