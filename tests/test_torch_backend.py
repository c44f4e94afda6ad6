"""The one torch inference path: the runtime's TorchBackend, used by Segmenter (backend 'torch') and by the
bench (``bench.runners.torch_runner``), with the bench's options (threads, channels-last, precision guards)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from apd_edge.errors import ApdError  # noqa: E402

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from apd_edge.checkpoint import save_checkpoint
    from apd_edge.models import build_model

    torch.manual_seed(0)
    model = build_model("espnet", NUM_CLASSES)
    for m in model.modules():  # non-trivial BN statistics so that the logits differ between classes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("torch_backend") / "best.pt"
    save_checkpoint({"model_name": "espnet", "model_kwargs": {}, "num_classes": NUM_CLASSES,
                     "model": model.state_dict(), "recipe": {"export": {"input_size": [64, 96]}},
                     "classes": [f"c{i}" for i in range(NUM_CLASSES)], "mean": [0.5, 0.5, 0.5],
                     "std": [0.25, 0.25, 0.25]}, path)
    return path


def _reference_logits(ckpt, x: np.ndarray) -> np.ndarray:
    from apd_edge.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def test_backend_infer_equals_the_model_and_channels_last_agrees(ckpt):
    from apd_edge.runtime.backends.torch import TorchBackend

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    ref = _reference_logits(ckpt, x)
    plain = TorchBackend(ckpt)
    got = plain.infer(x)["logits"]
    assert got.shape == (1, NUM_CLASSES, 64, 96) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    cl = TorchBackend(ckpt, channels_last=True)
    convs = [p for p in cl.model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1]
    assert cl.options == "channels_last" and convs
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    np.testing.assert_allclose(cl.infer(x)["logits"], ref, rtol=1e-4, atol=1e-4)
    labels = plain.labels(plain.forward(plain.prepare(x)))
    assert labels.dtype == np.uint8 and (labels == ref.argmax(1)).all()


def test_segmenter_and_bench_runner_share_the_backend(ckpt):
    """The bench's torch rows and the runtime's torch Segmenter predict the same labels, equal to the model's."""
    from apd_edge.bench.artifacts import checkpoint_manifest
    from apd_edge.bench.runners import BenchRunner, torch_runner
    from apd_edge.checkpoint import load_checkpoint
    from apd_edge.runtime import Segmenter
    from apd_edge.runtime.backends.torch import TorchBackend
    from apd_edge.runtime.postprocess import restore_labels

    manifest = checkpoint_manifest(load_checkpoint(ckpt), None)
    img = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)  # padded up to 64 x 96
    seg = Segmenter(manifest, ckpt.parent, TorchBackend(ckpt), "torch", "fp32")
    x, meta = seg.preprocess(img)
    expected = restore_labels(_reference_logits(ckpt, x).argmax(1)[0].astype(np.uint8), meta)
    runner = torch_runner(ckpt, manifest)
    assert isinstance(runner, BenchRunner) and isinstance(runner.impl, TorchBackend)
    assert (seg.predict(img) == expected).all() and (runner.predict(img) == expected).all()
    assert expected.shape == (50, 70) and len(np.unique(expected)) > 1
    assert runner.static_batch() is None and runner.gpu_peak_mb() is None and not runner.on_cuda
    assert runner.params == sum(p.numel() for p in runner.impl.model.parameters()) > 100_000


def test_threads_are_set_and_put_back(ckpt):
    from apd_edge.runtime.backends.torch import TorchBackend

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    b = TorchBackend(ckpt, threads=want)
    assert torch.get_num_threads() == want and b.threads() == f"torch {want}"
    b.close()
    assert torch.get_num_threads() == before


def test_guards_name_the_problem(ckpt, tmp_path):
    from apd_edge.runtime.backends.torch import TorchBackend

    before = torch.get_num_threads()
    with pytest.raises(ApdError, match="runs fp32 or fp16, not int8"):
        TorchBackend(ckpt, precision="int8")
    with pytest.raises(ApdError, match="fp16 runs on CUDA only"):
        TorchBackend(ckpt, precision="fp16", threads=1)
    with pytest.raises(ApdError, match="CUDA-graph replay needs a CUDA device"):
        TorchBackend(ckpt, cuda_graph=True)
    with pytest.raises(ApdError, match="changed since the bundle was exported"):
        TorchBackend(ckpt, expected_sha256="0" * 64)
    with pytest.raises(ApdError, match="source checkpoint is not here"):
        TorchBackend(tmp_path / "gone.pt")
    assert torch.get_num_threads() == before  # a refused backend leaves the process setting alone
