"""Timing statistics, /proc memory parsing and the report files (table, JSON, CSV, PNG)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from apd_edge.bench.report import Row, format_table, markdown_table, write_all
from apd_edge.bench.timing import (HostMemory, parse_proc_status, percentile, summarize, time_calls,
                                   time_interleaved)


def test_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    xs = list(rng.exponential(5.0, 101))
    for q in (50, 90, 99):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    s = summarize(xs)
    assert s["p50"] <= s["p90"] <= s["p99"] and s["n"] == 101
    assert math.isnan(summarize([])["p50"])


def test_time_calls_excludes_warmup_and_syncs():
    calls, syncs = [], []
    t = time_calls(lambda: calls.append(1), warmup=3, iters=5, sync=lambda: syncs.append(1))
    assert len(t) == 5 and len(calls) == 8 and all(v >= 0 for v in t)
    assert len(syncs) == 6  # once after warm-up, once per timed call
    with pytest.raises(ValueError):
        time_calls(lambda: None, 0, 0)


class _DriftingMachine:
    """A fake clock whose calls get faster over time (another job finishing): ``infer`` costs ``load`` ms,
    the pipeline ``load`` + 1 ms, and every call lowers the load by 0.5 ms."""

    def __init__(self) -> None:
        self.now, self.load = 0.0, 40.0

    def perf_counter(self) -> float:
        return self.now

    def infer(self) -> None:
        self.now += self.load / 1000.0
        self.load -= 0.5

    def e2e(self) -> None:
        self.now += 0.001
        self.infer()


def test_time_interleaved_keeps_the_pipeline_above_its_part_when_load_drifts(monkeypatch):
    import apd_edge.bench.timing as timing

    m = _DriftingMachine()
    monkeypatch.setattr(timing, "time", m)
    blocks = summarize(time_calls(m.infer, 0, 20)), summarize(time_calls(m.e2e, 0, 20))
    assert blocks[1]["p50"] < blocks[0]["p50"]  # the old way: e2e "faster" than the infer inside it
    m = _DriftingMachine()
    monkeypatch.setattr(timing, "time", m)
    calls = []
    got = time_interleaved({"infer": lambda: (calls.append("i"), m.infer()),
                            "e2e": lambda: (calls.append("e"), m.e2e())}, warmup=1, iters=20)
    assert len(got["infer"]) == len(got["e2e"]) == 20 and calls[:4] == ["i", "e", "i", "e"]
    assert calls[4:6] == ["e", "i"]  # the starting function rotates each round
    med = summarize(got["infer"])["p50"], summarize(got["e2e"])["p50"]
    assert med[0] < med[1] < med[0] + 1.5
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, 0, 0)


def test_proc_status_and_host_memory():
    text = "Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
    assert parse_proc_status(text) == {"VmHWM": 204800, "VmRSS": 102400}
    with HostMemory() as m:
        block = np.ones(40 * 2**20 // 8)  # 40 MiB touched
        block += 1
    assert m.peak_delta_mb is not None and m.peak_delta_mb >= 30
    del block


def _rows():
    ok = Row(model="espnet", artifact="b", backend="ort", precision="fp32", size_mb=1.5, params=350_000, gmacs=0.2,
             miou=0.42, compute_p50=2.0, compute_p90=3.0, compute_p99=4.0, e2e_p50=3.0, e2e_p90=4.0, e2e_p99=5.0,
             fps_b1=400.0, batch=4, fps_batch=900.0, host_mem_mb=12.0, threads="ort intra-op 2")
    noacc = Row(model="espnet", artifact="b", backend="ort", precision="int8", compute_p50=1.0, e2e_p50=2.0)
    skipped = Row(model="espnet", artifact="b", backend="trt", precision="fp32", status="skipped",
                  reason="TensorRT not installed")
    return [ok, noacc, skipped]


def test_table_shows_values_and_reasons():
    text = format_table(_rows())
    assert "42.00" in text and "2.00/3.00/4.00" in text and "TensorRT not installed" in text
    assert "900.0 (b4)" in text and "0.35M" in text
    md = markdown_table(_rows())
    assert md.count("\n") == 4 and md.startswith("| model")


def test_files_written(tmp_path):
    files = write_all(_rows(), tmp_path, {"cpu_model": "x"}, {"iters": 5})
    data = json.loads(files["json"].read_text())
    assert data["machine"]["cpu_model"] == "x" and len(data["rows"]) == 3
    assert data["rows"][2]["reason"] == "TensorRT not installed"
    with open(files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["miou"] == "0.42" and rows[2]["status"] == "skipped"
    png = files["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_parse_cuda_mem_get_info():
    from apd_edge.bench.run import parse_mem_get_info

    assert parse_mem_get_info((0, 6 * 2**30, 8 * 2**30)) == 2048.0
    assert parse_mem_get_info((2, 0, 0)) is None  # cudaErrorMemoryAllocation etc.
    assert parse_mem_get_info(None) is None


def test_long_reason_does_not_widen_measured_columns():
    ok = Row(model="m", artifact="a", backend="ort", precision="fp32", compute_p50=1.0, compute_p90=2.0,
             compute_p99=3.0, e2e_p50=1.5, e2e_p90=2.5, e2e_p99=3.5, fps_b1=100.0)
    reason = "TensorRT not installed " + "x" * 150
    skipped = Row(model="m", artifact="a", backend="trt", precision="fp32", status="skipped", reason=reason)
    lines = format_table([ok, skipped]).splitlines()
    assert lines[2].index("1.50/2.50/3.50") < 80  # e2e column right after a latency column of normal width
    assert lines[3].endswith(reason) and lines[3].index(reason) == lines[0].index("ms p50/p90/p99")
