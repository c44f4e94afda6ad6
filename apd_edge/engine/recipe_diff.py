"""``--resume`` safety: the recipe given now against the one the run's checkpoint was trained with.

A changed value is refused unless the user allows it (``--allow-change train.iterations``; a section
name such as ``eval`` allows all of its keys), so a resumed run never silently mixes two recipes. The
``export`` section does not touch training, so its changes (a new default, say) are reported, not refused.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..errors import ApdError

# keys that may differ without consequence: the run folder is found through them, so they already agree
IGNORED = ("name", "output_dir")
# sections that never touch the trained weights: a change is accepted (and reported), not refused
NOT_TRAINING = ("export",)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists and free-form mappings stay whole values
    below the sections (``model.kwargs`` is compared key by key too)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, path))
        else:
            out[path] = v
    return out


def recipe_changes(stored: dict, given: dict) -> list[tuple[str, Any, Any]]:
    """(key, stored value, given value) for every key whose value differs; missing keys count as None."""
    a, b = flatten(stored), flatten(given)
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k), b.get(k)) for k in keys if k.split(".")[0] not in IGNORED and a.get(k) != b.get(k)]


def is_allowed(key: str, allowed: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p.rstrip(".") + ".") for p in allowed)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume_recipe(stored: dict, given: dict, allowed: Sequence[str] = (), where: str = "the run") -> list:
    """Raise ApdError for changes not in ``allowed``; return the allowed changes (key, old, new)."""
    changes = recipe_changes(stored, given)
    refused = [c for c in changes if not is_allowed(c[0], tuple(allowed) + NOT_TRAINING)]
    if refused:
        shown = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, a, b in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        flags = " ".join(f"--allow-change {k}" for k, _, _ in refused[:6])
        raise ApdError(f"--resume: the recipe differs from the one {where} was trained with: {shown}{more}; "
                       f"resume with the same recipe, or accept the change with {flags}")
    return changes
