"""``apd-edge models``: the model zoo with inference-graph parameters and GMACs at a given size."""

from __future__ import annotations

import re

import click

from ..errors import ApdError


def parse_size(text: str) -> tuple[int, int]:
    """``"360x480"`` -> (360, 480) (height x width)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 32 or int(m.group(2)) < 32:
        raise ApdError(f"--size: expected HxW with both >= 32, e.g. 360x480, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def _natural(name: str) -> list:
    """Sort key that orders r18 < r50 < r101."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@click.command("models")
@click.option("--size", default="360x480", show_default=True, help="Input size HxW for the GMAC count.")
@click.option("--classes", "num_classes", default=19, show_default=True, type=click.IntRange(1),
              help="Number of classes.")
@click.option("--role", type=click.Choice(["student", "teacher"]), default=None, help="Only students or teachers.")
def models(size: str, num_classes: int, role: str | None) -> None:
    """List registered models: parameters (inference graph, no auxiliary heads), GMACs, feature map."""
    from ..models import list_models
    from ..models.profile import model_profile
    from ..tables import text_table

    h, w = parse_size(size)
    rows = [model_profile(n, num_classes, (h, w)) for n in list_models(role)]
    # students first, then teachers by family and depth (r18 < r50 < r101)
    rows.sort(key=lambda r: (r["role"] != "student", *_natural(r["name"])))
    header = ("model", "role", "params (M)", f"GMACs @{h}x{w}", "feat ch", "feat stride")
    table = [header] + [
        (r["name"], r["role"], f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.2f}", str(r["feat_channels"]),
         str(r["feat_stride"]))
        for r in rows
    ]
    click.echo(text_table(table[0], table[1:], align="llrrrr"))
    click.echo(f"\n{num_classes} classes; params exclude training-only auxiliary heads; MACs = FLOPs/2 "
               "(torch.utils.flop_counter: convolutions and matmuls).")
