"""benchmarks/camvid_study.py: its plan is valid recipes, its scaled copy keeps labels exact, it picks the best run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from apd_edge.config import load_recipe, save_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("camvid_study", REPO / "benchmarks" / "camvid_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dry_run(study, tmp_path, monkeypatch) -> Path:
    runs = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", [
        "camvid_study.py", "run", "--camvid", str(tmp_path / "camvid"), "--device", "cpu", "--teacher", "pspnet_r18",
        "--teacher-set", "model.kwargs.output_stride=16", "--student-iters", "40", "--seeds", "0,1",
        "--runs", str(runs), "--set", "train.crop=[160,224]", "--dry-run"])
    study.main()
    return runs


def test_dry_run_plan_is_valid_recipes(study, tmp_path, monkeypatch) -> None:
    runs = _dry_run(study, tmp_path, monkeypatch)
    plan = json.loads((runs / "study_plan.json").read_text())
    assert len(plan["students"]) == 3 * 4 * 2 and len(plan["commands"]) == 25
    teacher = load_recipe(REPO / plan["teacher"]["recipe"], plan["teacher"]["sets"])
    assert teacher.model.name == "pspnet_r18" and teacher.model.kwargs == {"output_stride": 16}
    for job in plan["students"]:
        r = load_recipe(REPO / job["recipe"], job["sets"])
        assert (r.distill.method, r.seed, r.model.name) == (job["method"], job["seed"], job["model"])
        assert r.teacher.name == "pspnet_r18" and r.train.iterations == 40 and r.train.crop == [160, 224]
        assert r.train.warmup_iters == 2 and r.model.pretrained is False
    # one schedule per architecture: only the method and the seed differ between its runs
    by_model: dict[str, set] = {}
    for job in plan["students"]:
        rest = [s for s in job["sets"] if not s.startswith(("name=", "seed=", "distill.method="))]
        by_model.setdefault(job["model"], set()).add(tuple(rest))
    assert all(len(v) == 1 for v in by_model.values())


def test_scaled_copy_keeps_labels_exact(study, tmp_path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (src / split).mkdir(parents=True)
        (src / f"{split}annot").mkdir()
        cv2.imwrite(str(src / split / "a.png"), rng.integers(0, 255, (36, 48, 3), dtype=np.uint8))
        cv2.imwrite(str(src / f"{split}annot" / "a.png"), rng.choice([0, 3, 11], size=(36, 48)).astype(np.uint8))
    (src / "train.txt").write_text("train/a.png trainannot/a.png\n")
    study.scaled_copy(src, dst, 0.5)
    img = cv2.imread(str(dst / "val" / "a.png"))
    mask = cv2.imread(str(dst / "valannot" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (18, 24, 3) and mask.shape == (18, 24) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 3, 11}  # nearest neighbour: no blended label values
    assert not (dst / "train.txt").exists()  # full-size pair lists would point at nothing useful


def test_best_runs_picks_highest_final_miou(study, tmp_path) -> None:
    for name, model, miou in [("study_espnet_kd_s0", "espnet", 0.3), ("study_espnet_apd_s1", "espnet", 0.35),
                              ("study_bisenetv2_none_s0", "bisenetv2", 0.2),
                              ("study_bisenetv2_kd_s0", "bisenetv2", None)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"model": model, "final_miou": miou}))
    best = study._best_runs(tmp_path)
    assert {m: p.name for m, (_, p) in best.items()} == {"espnet": "study_espnet_apd_s1",
                                                         "bisenetv2": "study_bisenetv2_none_s0"}


def test_verdict_compares_difference_with_seed_spread(study) -> None:
    two = {0: 0.0, 1: 0.0}
    table = {"espnet": {"none": {"mean": 30.0, "spread": 1.0, "seeds": two},
                        "kd": {"mean": 31.5, "spread": 3.0, "seeds": two},
                        "cwd": {"mean": 29.0, "spread": 0.0, "seeds": {0: 29.0}},
                        "apd": {"mean": 33.0, "spread": 0.5, "seeds": two}},
             "bisenetv2": {"none": {"mean": 40.0, "spread": 1.0, "seeds": two}}}
    v = study.verdict(table)
    assert set(v) == {"espnet"} and set(v["espnet"]) == {"none", "kd", "cwd"}
    assert v["espnet"]["cwd"]["beyond_noise"] is None  # one seed: no spread to compare with
    assert v["espnet"]["none"] == {"diff": 3.0, "noise": 1.0, "beyond_noise": True}
    assert v["espnet"]["kd"]["diff"] == pytest.approx(1.5) and v["espnet"]["kd"]["beyond_noise"] is False


def test_report_tables_verdict_and_recipes(study, tmp_path, monkeypatch) -> None:
    runs = _dry_run(study, tmp_path, monkeypatch)
    plan = json.loads((runs / "study_plan.json").read_text())
    score = {"none": 0.30, "kd": 0.31, "cwd": 0.29, "apd": 0.34}
    for job in [plan["teacher"], *plan["students"]]:
        d = runs / job["name"]
        d.mkdir()
        save_recipe(load_recipe(REPO / job["recipe"], job["sets"]), d / "recipe.yaml")
        miou = 0.5 if job is plan["teacher"] else score[job["method"]] + 0.01 * job["seed"]
        (d / "summary.json").write_text(json.dumps({"model": job.get("model", "pspnet_r18"), "final_miou": miou,
                                                    "wall_time_s": 60.0, "steps": 40}))
    out = tmp_path / "results"
    monkeypatch.setattr(sys, "argv", ["camvid_study.py", "report", "--runs", str(runs), "--out", str(out)])
    study.main()
    md = (out / "camvid.md").read_text()
    assert "Teacher `pspnet_r18` (from scratch): val mIoU **50.00**" in md
    assert "| apd | 34.00 | 35.00 | **34.50** | 1.00 |" in md
    assert "| espnet | +4.00 (spread 1.00, beyond spread) | +3.00 (spread 1.00, beyond spread) |" in md
    data = json.loads((out / "camvid.json").read_text())
    assert data["students"]["mobilenetv2"]["kd"]["mean"] == pytest.approx(31.5) and not data["missing"]
    assert (out / "camvid.png").stat().st_size > 10_000
    saved = load_recipe(out / "camvid_recipes" / "bisenetv2.yaml")  # committed recipes load back as recipes
    assert saved.teacher.name == "pspnet_r18" and saved.data.root == "/path/to/camvid"
