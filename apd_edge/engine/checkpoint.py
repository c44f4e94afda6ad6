"""Checkpoint I/O lives in :mod:`apd_edge.checkpoint`, below engine, distill and runtime (which all read
checkpoints). This name stays for the engine's modules and for scripts written against it."""

from ..checkpoint import (RUN_CHECKPOINTS, check_shapes, checkpoint_file, find_checkpoint,  # noqa: F401
                          load_checkpoint, model_from_checkpoint, save_checkpoint)
