"""Paired-study statistics against hand computations, and the report written from run folders."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from apd_edge.engine.paired import analyse, curve_shape, paired_stats, t_quantile, write_report
from apd_edge.engine.study import load_plan


@pytest.mark.parametrize("df,q", [(1, 12.706204736), (2, 4.302652730), (3, 3.182446305), (10, 2.228138852),
                                  (30, 2.042272456)])
def test_t_quantile_matches_tables(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-7)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=1e-7)


def test_paired_stats_by_hand():
    # d = 1, 2, 0.5, 1.5: mean 1.25; squared deviations 0.0625 + 0.5625 + 0.5625 + 0.0625 = 1.25;
    # sd = sqrt(1.25 / 3) = 0.6454972; se = sd / 2 = 0.3227486; t(0.975, 3) = 3.1824463 -> half 1.0271298
    s = paired_stats([1.0, 2.0, 0.5, 1.5])
    assert s["n"] == 4 and s["mean"] == pytest.approx(1.25)
    assert s["sd"] == pytest.approx(math.sqrt(1.25 / 3))
    assert s["half_width"] == pytest.approx(1.0271298, abs=1e-6)
    assert (s["low"], s["high"]) == pytest.approx((0.2228702, 2.2771298), abs=1e-6)
    assert paired_stats([0.3])["half_width"] is None and paired_stats([])["mean"] is None


def _runs(values: dict[str, list[float | None]]) -> dict:
    return {f"esp_{m}_s{s}": {"student": "esp", "method": m, "seed": s, "final_miou": v, "curve": []}
            for m, vs in values.items() for s, v in enumerate(vs)}


def test_analyse_pairs_by_seed_and_reads_the_verdict_off_the_interval():
    runs = _runs({"none": [30.0, 32.0, 31.0, 29.0], "kd": [31.0, 31.5, 31.2, 30.0],
                  "apd": [31.0, 34.0, 31.5, 30.5], "cwd": [35.0, 37.0, None, 35.0]})
    res = analyse(runs, ["esp"], ["none", "kd", "cwd", "apd"], [0, 1, 2, 3])["esp"]
    p = res["paired"]
    assert p["none"]["per_seed"] == {0: 1.0, 1: 2.0, 2: 0.5, 3: 1.5}  # the hand-checked differences
    assert p["none"]["low"] == pytest.approx(0.22287, abs=1e-5)
    assert p["none"]["verdict"].startswith("apd beats none by +1.25 ± 1.03")
    assert p["cwd"]["n"] == 3 and set(p["cwd"]["per_seed"]) == {0, 1, 3}  # seed 2 unfinished: left out
    # cwd: d = -4, -3, -4.5: mean -3.833, sd 0.7638, half 4.3027 * 0.7638 / sqrt(3) = 1.897: below 0
    assert p["cwd"]["half_width"] == pytest.approx(4.302652730 * math.sqrt(0.5833333333) / math.sqrt(3), rel=1e-6)
    assert p["cwd"]["verdict"].startswith("apd is below cwd by -3.83 ± 1.90")
    # kd: d = 0, 2.5, 0.3, 0.5 -> interval contains 0
    assert p["kd"]["mean"] == pytest.approx(0.825) and "no difference shown" in p["kd"]["verdict"]
    assert res["methods"]["cwd"]["n"] == 3 and res["methods"]["cwd"]["mean"] == pytest.approx(107 / 3)


def test_curve_shape():
    sh = curve_shape([(100, 10.0, 4), (200, 20.0, 4), (300, 24.0, 4), (400, 25.0, 4)])
    assert sh["first_gain_per_100"] == pytest.approx(10.0) and sh["last_gain_per_100"] == pytest.approx(1.0)
    assert sh["past_steep_part"] is True
    assert curve_shape([(100, 10.0, 1), (200, 20.0, 1), (300, 29.0, 1)])["past_steep_part"] is False


def test_report_from_run_folders(tmp_path):
    out = tmp_path / "study"
    plan_file = tmp_path / "plan.yaml"
    rec = tmp_path / "s.yaml"
    rec.write_text(yaml.safe_dump({"model": {"name": "espnet"}, "data": {"dataset": "synthetic"},
                                   "train": {"iterations": 20}}))
    plan_file.write_text(yaml.safe_dump({"output_dir": str(out), "students": [{"recipe": "s.yaml", "name": "esp"}],
                                         "methods": ["none", "apd"], "seeds": [0, 1],
                                         "teacher": {"name": "pspnet_r18", "checkpoint": "t.pt"}}))
    finals = {"none": [20.0, 22.0], "apd": [21.0, 24.0]}
    for m, vs in finals.items():
        for s, v in enumerate(vs):
            d = out / f"esp_{m}_s{s}"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"steps": 20, "final_miou": v / 100, "wall_time_s": 5.0}))
            (d / "metrics.jsonl").write_text("".join(json.dumps({"type": "eval", "step": k, "miou": v / 100 * k / 20})
                                                     + "\n" for k in (10, 20)))
    (out / "streams").mkdir()
    (out / "streams" / "seed_0.json").write_text(json.dumps({
        "wall_s": 100.0, "teacher_s": 30.0, "teacher_forwards": 20, "steps": 20,
        "run_s": {"esp_none_s0": 20.0, "esp_apd_s0": 30.0}, "runs": ["esp_apd_s0", "esp_none_s0"],
        "teacher_runs": ["esp_apd_s0"]}))
    paths = write_report(load_plan(plan_file), tmp_path / "res", name="r")
    assert {p.name for p in paths} == {"r.md", "r.json", "r.png", "r_plan.yaml"}
    md = (tmp_path / "res" / "r.md").read_text()
    assert "Runs finished: 4 of 4" in md
    # d = 1, 2: mean 1.5, sd 0.7071, half = 12.7062 * 0.7071 / sqrt(2) = 6.353
    assert "apd vs none: +1.50 ± 6.35 mIoU, no difference shown" in md
    assert "| none | 20.00 | 22.00 | **21.00** | 1.41 |" in md
    data = json.loads((tmp_path / "res" / "r.json").read_text())
    assert data["curves"]["esp"]["apd"] == [[10, 11.25, 2], [20, 22.5, 2]]
    assert data["speedup"]["seed 0"]["estimated_speedup"] == pytest.approx((50 + 30) / (50 + 30))
    assert "apd-edge distill s.yaml" in md or "apd-edge distill" in md


def test_study_cli_dry_run_and_errors(tmp_path):
    from click.testing import CliRunner

    from apd_edge.cli.main import cli

    rec = tmp_path / "s.yaml"
    rec.write_text(yaml.safe_dump({"model": {"name": "espnet"}, "data": {"dataset": "synthetic"}}))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"), "students": [{"recipe": "s.yaml"}],
                                    "methods": ["none", "kd"], "seeds": [0, 1],
                                    "teacher": {"name": "pspnet_r18", "checkpoint": "t.pt"}}))
    res = CliRunner().invoke(cli, ["study", "run", str(plan), "--dry-run", "--set", "seeds=[3]"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("apd-edge distill") for ln in lines)
    assert "--set name=espnet_kd_s3" in lines[1] and "--set teacher.checkpoint=t.pt" in lines[1]
    res = CliRunner().invoke(cli, ["study", "run", str(plan), "--set", "methods=[none, kdd]"])
    assert res.exit_code == 2 and "unknown distillation method 'kdd'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_conditions_are_computed():
    from apd_edge.engine.paired import conditions

    res = {"esp": {"methods": {"none": {"n": 4}, "apd": {"n": 3}}}}
    shapes = {"esp": {"none": {"first_gain_per_100": 10.0, "last_gain_per_100": 1.0, "past_steep_part": True}}}
    c = conditions(res, {"esp": {"gap": 16.0}}, shapes, ["none", "apd"])
    assert not c["ok"] and [x["ok"] for x in c["checks"]] == [False, True, True]
    res["esp"]["methods"]["apd"]["n"] = 4
    assert conditions(res, {"esp": {"gap": 16.0}}, shapes, ["none", "apd"])["ok"]
    assert not conditions(res, {"esp": {"gap": 14.9}}, shapes, ["none", "apd"])["ok"]
