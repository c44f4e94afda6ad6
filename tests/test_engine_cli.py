"""`apd-edge train | distill | eval` through Click's CliRunner, and a short distillation that learns."""

from __future__ import annotations

import json

import cv2
import pytest
import torch
import yaml
from click.testing import CliRunner

from apd_edge.cli.main import cli
from helpers.training import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(tmp_path, recipe: dict, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_train_then_eval_with_visualisations(tmp_path):
    rec = _write(tmp_path, tiny_recipe(tmp_path, "clirun", iterations=4, eval_interval=4, ckpt_interval=4), "r")
    runner = CliRunner()
    res = runner.invoke(cli, ["train", str(rec), "--set", "train.lr=0.01", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output and "clirun" in res.output  # the printed summary
    run = tmp_path / "runs" / "clirun"
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["lr"] == 0.01
    again = runner.invoke(cli, ["train", str(rec), "--quiet"])
    assert again.exit_code == 2 and "--resume" in again.output

    vis = tmp_path / "vis"
    res = runner.invoke(cli, ["eval", str(run), "--max-images", "3", "--save-vis", str(vis), "--flip", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output and "road" in res.output and "3 of 4 images (evenly spaced, max 3)" in res.output
    pngs = sorted(vis.glob("*.png"))
    assert [p.name for p in pngs] == ["000000.png", "000002.png", "000003.png"]  # named after the source frames
    img = cv2.imread(str(pngs[0]))
    assert img.shape[0] > 64 and img.shape[1] == 3 * 96 + 8  # titles + image | gt | prediction + legend

    res = runner.invoke(cli, ["eval", str(run / "last.pt"), "--scales", "0.5,x", "--quiet"])
    assert res.exit_code == 2 and "--scales" in res.output


def test_cli_eval_corrupt_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00garbage")
    res = CliRunner().invoke(cli, ["eval", str(bad)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip() and not ln.startswith("warning: load average")]
    assert len(lines) == 1 and lines[0].startswith("error: cannot read checkpoint")


def _teacher_gap(student_ckpt, teacher_ckpt, loader) -> tuple[float, float]:
    """Mean pixel KL(teacher || student) and the share of pixels where the two argmaxes differ."""
    from apd_edge.checkpoint import model_from_checkpoint

    student, _ = model_from_checkpoint(student_ckpt)
    teacher, _ = model_from_checkpoint(teacher_ckpt)
    kl, differ, n = 0.0, 0, 0
    with torch.no_grad():
        for img, _ in loader:
            s, t = student.eval()(img), teacher.eval()(img)
            kl += torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True,
                                             reduction="sum").item()
            differ += int((s.argmax(1) != t.argmax(1)).sum())
            n += s[:, 0].numel()
    return kl / n, differ / n


@pytest.mark.slow
def test_distill_with_apd_pulls_the_student_to_its_teacher(tmp_path):
    """Teacher trained briefly; then the same student (same seed: same init, same batches) trained twice,
    with APD and with cross-entropy alone. Plain CE also improves on a fresh network, so the claim tested is
    what distillation adds: the APD student ends much closer to the teacher's predictions."""
    from apd_edge.config import recipe_from_dict
    from apd_edge.data import build_loader
    from apd_edge.engine.trainer import train

    opts = dict(iterations=40, optimizer="adamw", lr=0.004, weight_decay=0.0001, head_lr_mult=1.0,
                warmup_iters=0, eval_interval=40, ckpt_interval=40, log_interval=10)
    teacher = dict(tiny_recipe(tmp_path, "teacher", **opts), seed=11)  # not the students' init or batches
    t_run = CliRunner().invoke(cli, ["train", str(_write(tmp_path, teacher, "t")), "--quiet"])
    assert t_run.exit_code == 0, t_run.output
    t_ckpt = tmp_path / "runs" / "teacher" / "best.pt"

    student = tiny_recipe(tmp_path, "student", **opts)
    student["teacher"] = {"checkpoint": str(t_ckpt)}
    student["distill"] = {"method": "apd", "apd": {"proj_dim": 32}}
    res = CliRunner().invoke(cli, ["distill", str(_write(tmp_path, student, "s")), "--quiet"])
    assert res.exit_code == 0, res.output
    ce_run = train(recipe_from_dict(tiny_recipe(tmp_path, "ce", **opts)), progress=False)

    summary = json.loads((tmp_path / "runs" / "student" / "summary.json").read_text())
    assert summary["method"] == "apd"
    records = [json.loads(x) for x in (tmp_path / "runs" / "student" / "metrics.jsonl").read_text().splitlines()]
    assert {"kd", "apd_pk", "apd_pa"} <= set(records[0])
    assert torch.load(tmp_path / "runs" / "student" / "last.pt", weights_only=True)["distiller_extra"]
    loader = build_loader(recipe_from_dict(student), "val", train=False)
    kl_apd, differ_apd = _teacher_gap(tmp_path / "runs" / "student" / "last.pt", t_ckpt, loader)
    kl_ce, differ_ce = _teacher_gap(ce_run / "last.pt", t_ckpt, loader)
    print(f"KL to teacher: APD {kl_apd:.4f}, CE {kl_ce:.4f}; argmax differs: APD {differ_apd:.3f}, CE {differ_ce:.3f}")
    # measured 0.68 and 0.71 with two teachers at this seed (0.89-0.94 at seed 5): KD pulls the student over
    assert kl_apd < 0.85 * kl_ce, (kl_apd, kl_ce)


@pytest.mark.slow
def test_quickstart_runs_end_to_end_in_miniature(tmp_path, monkeypatch):
    from apd_edge.engine import quickstart

    tiny = ["train.iterations=2", "train.batch_size=2", "train.crop=[64, 64]", "train.eval_interval=2",
            "train.ckpt_interval=2", "train.log_interval=1", "data.options.num_train=4", "data.options.num_val=2",
            "distill.apd.proj_dim=16"]
    monkeypatch.setattr(quickstart, "_fast_overrides", lambda recipe: tiny)
    args = ["quickstart", "--out", str(tmp_path / "qs"), "--export-dir", str(tmp_path / "ex"), "--fast", "--quiet"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "teacher" in res.output and "student (apd)" in res.output and "pspnet_r18" in res.output
    assert (tmp_path / "qs" / "quickstart" / "best.pt").is_file()
    # export and bench are part of the main job: three ONNX precisions, each benchmarked with a real mIoU
    manifest = json.loads((tmp_path / "ex" / "quickstart" / "manifest.json").read_text())
    assert {f["precision"] for f in manifest["files"] if f["format"] == "onnx"} == {"fp32", "fp16", "int8"}
    bench = json.loads((tmp_path / "ex" / "quickstart" / "bench.json").read_text())["rows"]
    assert [(r["precision"], r["status"]) for r in bench] == [("fp32", "ok"), ("fp16", "ok"), ("int8", "ok")]
    assert all(0.0 <= r["miou"] <= 1.0 and r["compute_p50"] > 0 for r in bench)
    assert all(r["eval_images"] == 2 for r in bench)  # the recipe's own val split (num_val=2), not the default
    assert "int8" in res.output and "ONNX Runtime" in res.output
    # a repeat never overwrites: the runs (and so the bundle folder, named after the student run) get -2.
    # The repeat's training alone is run here; the export and bench above are the same code either way.
    again = quickstart.run_quickstart(out=tmp_path / "qs", fast=True, progress=False)
    assert again["student"]["run"] == str(tmp_path / "qs" / "quickstart-2")
    assert again["teacher"]["run"] == str(tmp_path / "qs" / "quickstart_teacher-2")
    assert (tmp_path / "qs" / "quickstart-2" / "summary.json").is_file()
