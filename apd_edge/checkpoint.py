"""Checkpoints: finding one in a run folder, atomic writes, ``weights_only`` loads, and rebuilding a model.

A checkpoint is a dict of plain data (tensors, numbers, strings, lists, dicts):
  model_name, model_kwargs, num_classes, model (state dict), recipe (resolved, plain dict),
  step, best_miou, classes (names), palette ([[r, g, b], ...]), mean, std,
  and for resumable runs: optimizer(s), scheduler state, rng states, distiller state
(``docs/checkpoint-format.md``). This module sits below engine, distill, export and runtime, which all read
checkpoints; importing it imports no torch (the run-folder lookup is used by torch-free code).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ApdError

if TYPE_CHECKING:
    import torch

# A run folder's checkpoints, in the order a consumer (eval, export, bench, a teacher) prefers them.
RUN_CHECKPOINTS = ("best.pt", "last.pt")


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of a run folder: best.pt, else last.pt; None when it holds neither."""
    run_dir = Path(run_dir)
    return next((run_dir / n for n in RUN_CHECKPOINTS if (run_dir / n).is_file()), None)


def checkpoint_file(source: str | Path) -> Path:
    """A checkpoint file from a file or a run folder (best.pt, else last.pt); ApdError when there is none."""
    path = Path(source)
    if path.is_dir():
        found = find_checkpoint(path)
        if found is None:
            raise ApdError(f"no {' or '.join(RUN_CHECKPOINTS)} in run folder {path}")
        return found
    if not path.is_file():
        raise ApdError(f"checkpoint not found: {path}")
    return path


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` atomically: a temp file in the same folder, fsync, then rename."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, permission, read-only file system: name the cause on one line
        _unlink_quietly(tmp)
        kept = f"the previous {path.name} is kept" if path.is_file() else f"no {path.name} was written"
        raise ApdError(f"cannot write checkpoint {path}: {exc.strerror or exc} ({kept})") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str | None) -> None:
    try:
        if path is not None and os.path.exists(path):
            os.unlink(path)
    except OSError:
        pass


def _unsafe_reason(text: str) -> str:
    """The sentence of torch's weights-only refusal that says what was refused (its other lines are advice)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if "GLOBAL" in ln or "WeightsUnpickler error" in ln or "Unsupported" in ln]
    return " ".join(keep or lines[1:2] or lines[:1])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (a file, or a run folder's best.pt / last.pt) as data only (``weights_only=True``);
    clear errors for missing/corrupt files."""
    import torch

    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # a refused global names it; anything else is a damaged pickle
            raise ApdError(f"cannot read checkpoint {path}: corrupt or not a PyTorch checkpoint "
                           f"({_unsafe_reason(str(exc))})") from None
        raise ApdError(f"refusing to load {path}: it holds more than tensors and plain data, and loading it could "
                       f"run code ({_unsafe_reason(str(exc))}); apd-edge only loads checkpoints as data") from None
    except OSError as exc:
        raise ApdError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch raises several types for truncated / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ApdError(f"cannot read checkpoint {path}: corrupt or not a PyTorch checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict):
        raise ApdError(f"checkpoint {path} does not hold a dict (got {type(ckpt).__name__})")
    return ckpt


def model_from_checkpoint(path_or_ckpt: str | Path | dict, map_location: str = "cpu"):
    """Rebuild the model stored in an apd-edge checkpoint and load its weights. Returns (model, ckpt)."""
    from .guard import describe_nonfinite, nonfinite_in
    from .models import build_model

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt, map_location)
    for key in ("model_name", "num_classes", "model"):
        if key not in ckpt:
            raise ApdError(f"checkpoint lacks '{key}': not an apd-edge checkpoint")
    bad = nonfinite_in(ckpt["model"])
    if bad:
        raise ApdError(f"checkpoint{_named(path_or_ckpt)} holds non-finite weights (nan/inf in "
                       f"{describe_nonfinite(bad)}): it comes from a diverged run; use an earlier checkpoint")
    model = build_model(ckpt["model_name"], ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
    check_shapes(model, ckpt["model"], f"checkpoint{_named(path_or_ckpt)}", int(ckpt["num_classes"]))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ApdError(
            f"checkpoint weights do not fit {ckpt['model_name']} with {ckpt['num_classes']} classes "
            f"(missing {len(missing)}, unexpected {len(unexpected)} keys, e.g. {(missing or unexpected)[0]})"
        )
    return model, ckpt


def _named(path_or_ckpt) -> str:
    return "" if isinstance(path_or_ckpt, dict) else f" {path_or_ckpt}"


def check_shapes(model: torch.nn.Module, state: dict[str, Any], what: str, num_classes: int | None = None) -> None:
    """One-line ApdError when ``state`` has tensors shaped differently from ``model``'s (instead of torch's
    one line per tensor); a class-count difference is named as such."""
    import torch

    own = model.state_dict()
    diff = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
            if k in own and torch.is_tensor(v) and tuple(v.shape) != tuple(own[k].shape)]
    if not diff:
        return
    key, have, want = diff[0]
    # a class-count difference: dimensions equal to the model's class count differ, in the same way, somewhere
    from collections import Counter

    pairs = Counter(x for _, a, b in diff if len(a) == len(b) for x, y in zip(a, b) if x != y and y == num_classes)
    if num_classes is not None and pairs:
        n_ckpt, n_model = pairs.most_common(1)[0][0], num_classes
        key, have, want = next(d for d in diff if n_ckpt in d[1] and n_model in d[2])
        raise ApdError(f"{what} holds weights for {n_ckpt} classes but the model is built for {n_model} "
                       f"({len(diff)} tensor{'s' if len(diff) > 1 else ''} differ, e.g. {key}: {list(have)} vs "
                       f"{list(want)}); use a checkpoint trained on this dataset or set data.num_classes={n_ckpt}")
    raise ApdError(f"{what} does not fit the model: {len(diff)} tensor{'s' if len(diff) > 1 else ''} differ in "
                   f"shape, e.g. {key}: checkpoint {list(have)} vs model {list(want)}")
