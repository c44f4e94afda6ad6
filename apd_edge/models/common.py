"""Building blocks shared by the models (students and teachers): conv-BN-act, resizing, FCN head, ASPP,
and timm backbone creation."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ApdError


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + activation (ReLU by default; ``act=None`` for none)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU, bn_eps: float = 1e-5) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps),
        ]
        if act is not None:
            layers.append(act(cout) if act is nn.PReLU else act(inplace=True) if act is nn.ReLU else act())
        super().__init__(*layers)


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (align_corners=False); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FCNHead(nn.Sequential):
    """conv3x3-BN-ReLU, dropout, conv1x1 classifier: the auxiliary head used on intermediate features."""

    def __init__(self, cin: int, mid: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(ConvBNAct(cin, mid, 3), nn.Dropout2d(dropout), nn.Conv2d(mid, num_classes, 1))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: conv1x1, dilated conv3x3 branches, image pooling, projection.

    Image pooling is a global reduce-mean broadcast back with ``expand`` (exports at any input size).
    """

    def __init__(self, cin: int, ch: int, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvBNAct(cin, ch, 1)] + [ConvBNAct(cin, ch, 3, dilation=r) for r in rates])
        self.pool = ConvBNAct(cin, ch, 1)
        self.project = nn.Sequential(ConvBNAct(ch * (len(rates) + 2), ch, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        g = self.pool(x.mean((2, 3), keepdim=True))
        outs.append(g.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, 1))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hugging Face hub (``HF_ENDPOINT`` if set), instead of its long retries."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def weights_cached(arch: str) -> bool:
    """Whether timm's default weights for ``arch`` are already in the HF or torch-hub cache."""
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # unknown arch or an older timm: let create_model decide
        return False
    if cfg is None:
        return False
    if getattr(cfg, "hf_hub_id", None):
        try:
            from huggingface_hub import try_to_load_from_cache

            for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(cfg.hf_hub_id, name), str):
                    return True
        except ImportError:
            pass
    if getattr(cfg, "url", None):
        from pathlib import Path

        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        return hub.is_file()
    return False


def timm_backbone(arch: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, features_only=True, ...)``; a failed weight download is a one-line ApdError.

    Offline, weights not in the cache fail at once: one quick connectivity probe replaces the hub
    client's retries (about a minute); cached weights load without the network."""
    import timm

    if not pretrained:
        return timm.create_model(arch, pretrained=False, features_only=True, **kwargs)
    offline = False
    if not hub_reachable():
        if not weights_cached(arch):
            raise ApdError(
                f"ImageNet weights for {arch} are not cached and the model hub is unreachable (offline?); "
                "set model.pretrained: false, or run once with internet to fill the timm/HF cache"
            ) from None
        offline = True
    try:
        if offline:
            return _create_offline(timm, arch, **kwargs)
        return timm.create_model(arch, pretrained=True, features_only=True, **kwargs)
    except ApdError:
        raise
    except Exception:  # network, hub and cache errors come in many types
        raise ApdError(
            f"could not download ImageNet weights for {arch} (offline?); set model.pretrained: false "
            "or place the weights in the timm/HF cache"
        ) from None


def _create_offline(timm, arch: str, **kwargs: Any) -> nn.Module:
    """Build from the cache with the hub client in offline mode (no update checks that would wait)."""
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        return timm.create_model(arch, pretrained=True, features_only=True, **kwargs)
    before = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(arch, pretrained=True, features_only=True, **kwargs)
    finally:
        hf_constants.HF_HUB_OFFLINE = before


def no_pretrained(name: str, pretrained: bool) -> None:
    """Models trained from scratch in their papers have no ImageNet weights to load."""
    if pretrained:
        raise ApdError(
            f"model '{name}' is trained from scratch and has no pretrained weights; set model.pretrained: false"
        )

