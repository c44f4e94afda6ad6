"""The daily loop: --threads reaching torch and ONNX Runtime, curves.png and the per-class table at the end
of a run, `apd-edge runs`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from apd_edge import threads as threads_mod
from apd_edge.cli.main import cli
from apd_edge.threads import resolve_threads
from helpers.training import tiny_recipe


@pytest.fixture(autouse=True)
def _restore_threads():
    n, cur = torch.get_num_threads(), threads_mod._current
    yield
    torch.set_num_threads(n)
    threads_mod._current = cur


def test_resolve_threads_free_cores_and_warning():
    assert resolve_threads(cores=8, load=0.2) == (8, None)
    assert resolve_threads(cores=8, load=5.6) == (2, None)  # 8 cores, ~6 busy
    n, warn = resolve_threads(cores=2, load=3.4)
    assert n == 1 and "load average 3.4 exceeds the 2 CPU cores" in warn and "--threads N" in warn
    assert resolve_threads(3, 5, cores=2, load=0.0) == (3, None)  # --threads beats the recipe
    assert resolve_threads(None, 5, cores=2, load=0.0) == (5, None)


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_threads_reach_torch_and_onnxruntime(tmp_path):
    from apd_edge.runtime.backends.ort import OrtBackend

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, "thr", iterations=1, eval_interval=1, ckpt_interval=1)))
    torch.set_num_threads(2)
    res = CliRunner().invoke(cli, ["train", str(path), "--quiet", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1  # the command set torch's pool
    # eval on one image with more threads (cheap even on a busy machine); ORT sessions built afterwards follow
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "runs" / "thr"), "--quiet", "--threads", "3",
                                   "--max-images", "1"])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 3
    onnx_path = _tiny_onnx(tmp_path / "m.onnx")
    assert OrtBackend(onnx_path).session.get_session_options().intra_op_num_threads == 3
    assert OrtBackend(onnx_path, threads=1).session.get_session_options().intra_op_num_threads == 1
    # the recipe key works when --threads is absent
    path.write_text(yaml.safe_dump({**tiny_recipe(tmp_path, "thr2", iterations=1, eval_interval=1), "threads": 1}))
    torch.set_num_threads(2)
    assert CliRunner().invoke(cli, ["train", str(path), "--quiet"]).exit_code == 0
    assert torch.get_num_threads() == 1


def test_threads_option_on_every_compute_command():
    for cmd in ("train", "distill", "eval", "export", "bench", "demo", "quickstart"):
        res = CliRunner().invoke(cli, [cmd, "--help"])
        assert "--threads" in res.output, cmd


def test_run_end_writes_curves_and_per_class_table(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, "cur", iterations=4, eval_interval=2, log_interval=1)))
    res = CliRunner().invoke(cli, ["train", str(path), "--quiet", "--threads", "1"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "cur"
    summary = json.loads((run / "summary.json").read_text())
    names = summary["classes"]
    assert list(summary["per_class_iou"]) == names and len(names) == summary["num_classes"]
    finals = [v for v in summary["per_class_iou"].values() if v is not None]
    assert finals and all(0.0 <= v <= 1.0 for v in finals)
    present = [v for v in summary["final_iou"] if v == v]
    assert np.isclose(np.mean(present), summary["final_miou"])
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    best = next(r for r in evals if r["step"] == summary["best_step"])
    assert [summary["best_per_class_iou"][n] for n in names] == [None if v != v else v for v in best["iou"]]
    # on screen: a line per class with its final IoU in percent
    first = names[0]
    line = next(ln for ln in res.output.splitlines() if ln.split()[:1] == [first])
    v = summary["per_class_iou"][first]
    assert line.split()[1] == ("-" if v is None else f"{100 * v:.1f}")
    assert "per-class IoU (%)" in res.output and f"curves    {run / 'curves.png'}" in res.output

    import matplotlib.image as mpimg

    img = mpimg.imread(str(run / "curves.png"))
    assert img.shape[0] > 300 and img.shape[1] > 500 and img[..., :3].std() > 0.05  # a drawn figure


def test_curves_plot_loss_terms_and_miou(tmp_path):
    from apd_edge.engine.report import write_curves

    recs = [{"type": "train", "step": s, "loss": 2.0 / s, "ce": 1.5 / s, "kd": 0.5 / s, "lr": 0.01, "img_s": 3.0,
             "time": s} for s in (1, 2, 3, 4)]
    recs += [{"type": "eval", "step": 2, "miou": 0.2, "iou": [0.2]}, {"type": "eval", "step": 4, "miou": 0.3,
                                                                       "iou": [0.3]}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"type": "tr')
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    orig = plt.Figure.savefig

    def spy(fig, *a, **k):
        ax_loss, ax_miou = fig.axes
        captured["loss"] = sorted(line.get_label() for line in ax_loss.get_lines())
        captured["miou"] = [list(line.get_ydata()) for line in ax_miou.get_lines()]
        captured["ylim"] = ax_miou.get_ylim()
        return orig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        out = write_curves(tmp_path)
    finally:
        plt.Figure.savefig = orig
    assert out == tmp_path / "curves.png" and out.is_file()
    assert captured["loss"] == ["ce", "kd", "loss"]  # lr, img_s, time are not losses
    assert captured["miou"] == [[20.0, 30.0]] and captured["ylim"][0] == 0


def test_runs_lists_best_miou(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "summary.json").write_text(json.dumps({
        "model": "espnet", "method": "apd", "dataset": "camvid", "steps": 10, "iterations": 10, "best_miou": 0.4567,
        "best_step": 8, "final_miou": 0.45, "wall_time_s": 3.0}))
    (runs / "b").mkdir()  # unfinished: only metrics.jsonl and recipe.yaml
    (runs / "b" / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name": "bisenetv2"},
                                                            "train": {"iterations": 100}}))
    (runs / "b" / "metrics.jsonl").write_text('{"type": "train", "step": 5}\n'
                                              '{"type": "eval", "step": 5, "miou": 0.1}\n')
    (runs / "notarun").mkdir()
    res = CliRunner().invoke(cli, ["runs", str(runs), "--sort", "miou"])
    assert res.exit_code == 0, res.output
    rows = res.output.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["b", "a"]
    assert rows[1].split()[1:8] == ["espnet", "apd", "camvid", "10/10", "45.67", "8", "45.00"]
    assert rows[0].split()[4:6] == ["5/100", "10.00"] and "unfinished" in rows[0]
    assert "no runs" in CliRunner().invoke(cli, ["runs", str(tmp_path / "none")]).output


def test_vis_names_titles_and_legend():
    from apd_edge.data.base import default_palette
    from apd_edge.engine.vis import compose, vis_name

    assert vis_name("/d/leftImg8bit/val/seq01/f1_image.jpg", "/d", 0) == "leftImg8bit__val__seq01__f1_image.png"
    assert vis_name("synthetic://val/000007", None, 7) == "000007.png" and vis_name(None, None, 7) == "00007.png"
    pal = default_palette(6)
    rgb = np.zeros((60, 80, 3), np.uint8)
    gt = np.full((60, 80), 2)
    gt[:10] = 255
    pred = np.full((60, 80), 3)
    out = compose(rgb, gt, pred, ["a", "b", "c", "d", "e", "f"], pal, "f1_image.jpg")
    assert out.shape[1] == 3 * 80 + 8 and out.shape[0] > 60 + 20  # a title band above, a legend below
    band = out[: out.shape[0] - 60]
    assert (band[0:5] == 32).all(axis=-1).any()  # dark title band
    legend = out[-20:]
    colors = {tuple(c) for c in legend.reshape(-1, 3).tolist()}
    assert tuple(pal[2]) in colors and tuple(pal[3]) in colors and tuple(pal[1]) not in colors  # present classes only


def test_eval_time_is_left_out_of_the_eta():
    import io

    from tqdm import tqdm

    from apd_edge.engine.report import exclude_from_eta

    bar = tqdm(total=100, file=io.StringIO(), mininterval=0)
    bar.update(10)
    start, last = bar.start_t, bar.last_print_t
    exclude_from_eta(bar, 30.0)  # 30 s of evaluation
    assert bar.start_t == start + 30.0 and bar.last_print_t == last + 30.0
    assert bar.format_dict["elapsed"] < 1.0  # the bar's clock did not count the evaluation
    exclude_from_eta(None, 5.0)  # no bar (quiet runs): nothing to do
    bar.close()


def test_training_shows_an_eval_progress_bar(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, "bar", iterations=2, eval_interval=2, ckpt_interval=2)))
    res = CliRunner().invoke(cli, ["train", str(path), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "eval:" in res.output and "batch" in res.output  # the validation bar (2 batches of 2 images)


def test_free_cores_are_shared_by_torchrun_processes(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_threads(cores=16, load=0.0) == (4, None)
    assert resolve_threads(cores=2, load=0.0) == (1, None)
    assert resolve_threads(3, cores=16, load=0.0) == (3, None)
