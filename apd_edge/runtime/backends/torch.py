"""PyTorch reference backend: rebuilds the bundle's source checkpoint (torch imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ApdError


class TorchBackend:
    """Runs the source checkpoint's model in eval mode; ``infer`` returns ``{"logits": array}``."""

    name = "torch"

    def __init__(self, checkpoint: str | Path, device: str = "cpu", expected_sha256: str | None = None):
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            raise ApdError("the torch backend needs PyTorch installed (pip install torch)") from None
        from ...engine.checkpoint import model_from_checkpoint  # noqa: PLC0415

        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise ApdError(f"the bundle's source checkpoint is not here: {checkpoint} (the torch backend needs it)")
        if expected_sha256 and checkpoint.is_file():
            from ..manifest import sha256_file

            if sha256_file(checkpoint) != expected_sha256:
                raise ApdError(f"{checkpoint} changed since the bundle was exported (sha256 differs)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ApdError(f"device={device!r} but torch sees no CUDA GPU")
        self.torch = torch
        self.device = torch.device(device)
        model, _ = model_from_checkpoint(checkpoint)
        self.model = model.eval().to(self.device)
        self.output_names = ["logits"]

    def infer(self, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        with self.torch.inference_mode():
            y = self.model(self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device))
        return {"logits": y.float().cpu().numpy()}
