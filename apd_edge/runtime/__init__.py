"""Torch-free inference on exported bundles: ``Segmenter.from_bundle(path, backend=..., precision=...)``.

Nothing here imports torch at module level; the torch backend imports it only when chosen.
"""

from .backends import list_backends
from .manifest import load_manifest, save_manifest, sha256_file
from .segmenter import Segmenter

__all__ = ["Segmenter", "list_backends", "load_manifest", "save_manifest", "sha256_file"]
