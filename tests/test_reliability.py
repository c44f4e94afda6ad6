"""Reliability under faults (issue 13): NaN guard, recipe floats, run/bundle locks, safe resumes,
one-line errors, demo shutdown and URL redaction, stale temp files, run names, bench/data-check exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers.training import tiny_recipe

from apd_edge.cli.main import cli
from apd_edge.config import RecipeError, recipe_from_dict
from apd_edge.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from apd_edge.engine.trainer import Trainer, train
from apd_edge.errors import ApdError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny steps run on one torch thread


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _recipe_file(tmp_path: Path, name: str = "run", **train_kw) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, name, **train_kw)))
    return path


# ------------------------------------------------------------------------------------------------ 1. NaN guard


@pytest.mark.parametrize("lr", [100.0, 1e4, 1e6])
def test_nan_guard_names_a_checkpoint_whose_weights_are_good(tmp_path, lr):
    # checkpoint every step: the guard used to name the checkpoint of the very weights that broke (1e22 or inf)
    r = recipe_from_dict(tiny_recipe(tmp_path, "div", lr=lr, ckpt_interval=1, iterations=12, eval_interval=100))
    with pytest.raises(ApdError) as exc:
        train(r, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    failed = int(msg.split(" at step ")[1].split()[0])
    run = tmp_path / "runs" / "div"
    if "no good checkpoint" in msg:  # the first update already broke the weights: resume must not find them
        assert failed <= 2 and not (run / "last.pt").exists() and (run / "diverged.pt").exists()
        return
    assert "last good checkpoint: " in msg, msg
    named = Path(msg.split("last good checkpoint: ")[1].split()[0])
    assert named == run / "last.pt"
    ckpt = load_checkpoint(named)
    assert ckpt["step"] < failed
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    # "good" = training continues from it, at a sane learning rate, without diverging again
    sane = recipe_from_dict(tiny_recipe(tmp_path, "div", lr=0.02, ckpt_interval=1, iterations=ckpt["step"] + 3,
                                        eval_interval=100))
    train(sane, resume=True, progress=False, allow_changes=["train.lr", "train.iterations"])
    final = load_checkpoint(run / "last.pt")
    assert final["step"] == ckpt["step"] + 3
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())


def test_recipe_floats_must_be_finite():
    for bad in ({"train": {"lr": float("nan")}}, {"train": {"lr": float("inf")}},
                {"train": {"grad_clip": float("nan")}}, {"train": {"grad_clip": -1.0}},
                {"data": {"mean": [0.5, float("nan"), 0.5]}}, {"eval": {"scales": [float("inf")]}},
                {"distill": {"apd": {"tau": float("nan")}}}, {"model": {"aux_weights": [float("nan")]}}):
        with pytest.raises(RecipeError):
            recipe_from_dict(bad)


def test_set_lr_nan_is_a_one_line_error(tmp_path):
    f = _recipe_file(tmp_path)
    res = CliRunner().invoke(cli, ["recipe", "check", str(f), "--set", "train.lr=nan"])
    assert res.exit_code == 2
    assert _lines(res.output) == [next(ln for ln in _lines(res.output) if ln.startswith("error: train.lr"))]


# ---------------------------------------------------------------------------------- 2. non-finite weights downstream


def _nan_checkpoint(tmp_path: Path) -> Path:
    run = train(recipe_from_dict(tiny_recipe(tmp_path, "ok", iterations=2, eval_interval=2, ckpt_interval=2)),
                progress=False)
    ckpt = load_checkpoint(run / "last.pt")
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.dim() == 4)
    ckpt["model"][key][0].fill_(float("nan"))
    bad = tmp_path / "nan.pt"
    save_checkpoint(ckpt, bad)
    return bad


def test_eval_and_export_refuse_non_finite_weights(tmp_path):
    bad = _nan_checkpoint(tmp_path)
    with pytest.raises(ApdError, match="non-finite"):
        model_from_checkpoint(bad)
    res = CliRunner().invoke(cli, ["eval", str(bad), "--quiet"])
    assert res.exit_code == 2 and len(_lines(res.output)) == 1 and "non-finite" in res.output
    from apd_edge.export import export_bundle

    with pytest.raises(ApdError, match="non-finite"):
        export_bundle(bad, tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_runtime_refuses_non_finite_outputs():
    from apd_edge.runtime.segmenter import Segmenter

    class NanBackend:
        output_names = ["logits"]

        def infer(self, x, names):
            return {"logits": np.full((1, 3, 32, 32), np.nan, np.float32)}

    manifest = {"name": "t", "classes": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3, "mean": [0.5] * 3,
                "std": [0.5] * 3,
                "outputs": [{"name": "logits", "kind": "logits"}],
                "preprocess": {"mode": "resize", "size": [32, 32], "pad_fill": "reflect", "mean": [0.5] * 3,
                               "std": [0.5] * 3, "color": "RGB", "scale": 1 / 255, "layout": "NCHW"}}
    seg = Segmenter(manifest, Path("."), NanBackend(), "ort", "fp32")
    with pytest.raises(ApdError, match="non-finite"):
        seg.predict(np.zeros((32, 32, 3), np.uint8))


# ------------------------------------------------------------------------------------------------ 3. locks, re-runs


def test_a_run_folder_is_locked_while_a_trainer_holds_it(tmp_path):
    r = recipe_from_dict(tiny_recipe(tmp_path, "locked", iterations=2))
    first = Trainer(r, progress=False)
    try:
        with pytest.raises(ApdError, match=f"PID {os.getpid()}"):
            Trainer(r, progress=False).close()
    finally:
        first.close()
    Trainer(r, progress=False).close()  # released by close()


def test_lock_held_by_another_process_names_its_pid(tmp_path):
    from apd_edge.runlock import RunLock

    code = textwrap.dedent(f"""
        import sys, time
        from apd_edge.runlock import RunLock
        lock = RunLock({str(tmp_path / 'r')!r}, 'run folder')
        lock.acquire()
        print('held', flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ApdError, match=f"PID {proc.pid}"):
            RunLock(tmp_path / "r", "run folder").acquire()
    finally:
        proc.kill()
        proc.wait()
    with RunLock(tmp_path / "r", "run folder"):  # a dead holder's lock is free
        pass


def test_exist_ok_restarts_and_increment_numbers_the_run(tmp_path):
    kw = dict(iterations=2, eval_interval=2, ckpt_interval=2, log_interval=1)
    run = train(recipe_from_dict(tiny_recipe(tmp_path, "exp", **kw)), progress=False)
    with pytest.raises(ApdError, match="--exist-ok"):
        train(recipe_from_dict(tiny_recipe(tmp_path, "exp", **kw)), progress=False)
    again = train(recipe_from_dict(tiny_recipe(tmp_path, "exp", **kw)), progress=False, exist_ok=True)
    assert again == run and [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
                             if json.loads(x)["type"] == "train"] == [1, 2]
    second = train(recipe_from_dict(tiny_recipe(tmp_path, "exp", **kw)), progress=False, increment=True)
    third = train(recipe_from_dict(tiny_recipe(tmp_path, "exp", **kw)), progress=False, increment=True)
    assert (second.name, third.name) == ("exp2", "exp3")
    assert yaml.safe_load((third / "recipe.yaml").read_text())["name"] == "exp3"


def test_failed_re_export_keeps_the_previous_bundle(tmp_path, folder_bundle, monkeypatch):
    from apd_edge.export import export_bundle

    _, ckpt, _ = folder_bundle
    out = tmp_path / "bundle"
    export_bundle(ckpt, out, progress=False, calib_images=2, parity_images=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import apd_edge.export.onnx as onnx_mod

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_mod, "export_onnx", boom)
    with pytest.raises(OSError):
        export_bundle(ckpt, out, progress=False, calib_images=2, parity_images=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # no staging folder left behind (the lock file .bundle.lock stays: the kernel lock on it is what counts)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".bundle.lock") == ["bundle"]


def test_export_refuses_a_bundle_folder_in_use(tmp_path, folder_bundle):
    from apd_edge.export import export_bundle
    from apd_edge.export.bundle import bundle_lock

    _, ckpt, _ = folder_bundle
    with bundle_lock(tmp_path / "bundle"):
        with pytest.raises(ApdError, match=f"PID {os.getpid()}"):
            export_bundle(ckpt, tmp_path / "bundle", progress=False, parity_images=1)


# ------------------------------------------------------------------------------------------------ 4. resume


def test_resume_refuses_a_changed_recipe_unless_allowed(tmp_path):
    kw = dict(iterations=4, eval_interval=4, ckpt_interval=2, log_interval=1)
    run = train(recipe_from_dict(tiny_recipe(tmp_path, "r", **kw)), progress=False)
    changed = tiny_recipe(tmp_path, "r", **{**kw, "iterations": 6, "lr": 0.05})
    changed["seed"] = 4
    with pytest.raises(ApdError) as exc:
        train(recipe_from_dict(changed), resume=True, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "seed" in msg and "train.lr" in msg and "train.iterations" in msg
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["iterations"] == 4  # untouched
    longer = tiny_recipe(tmp_path, "r", **{**kw, "iterations": 6})
    with pytest.raises(ApdError, match="--allow-change train.iterations"):
        train(recipe_from_dict(longer), resume=True, progress=False)
    train(recipe_from_dict(longer), resume=True, progress=False, allow_changes=["train.iterations"])
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["iterations"] == 6
    assert load_checkpoint(run / "last.pt")["step"] == 6


def test_resume_cli_allow_change(tmp_path):
    f = _recipe_file(tmp_path, "c", iterations=2, eval_interval=2, ckpt_interval=2)
    assert CliRunner().invoke(cli, ["train", str(f), "-q"]).exit_code == 0
    res = CliRunner().invoke(cli, ["train", str(f), "-q", "--resume", "--set", "train.iterations=3"])
    assert res.exit_code == 2 and "train.iterations" in res.output and len(_lines(res.output)) == 1
    res = CliRunner().invoke(cli, ["train", str(f), "-q", "--resume", "--set", "train.iterations=3",
                                   "--allow-change", "train.iterations"])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------------- 5. one line everywhere


def _folder_data_with_a_bad_image(root: Path) -> None:
    import cv2

    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), np.full((64, 64, 3), 40 * i, np.uint8))
            cv2.imwrite(str(root / "masks" / split / f"{i}.png"), np.full((64, 64), i % 2, np.uint8))
    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["a", "b"]}))
    (root / "images" / "train" / "2.png").write_bytes(b"not a png")


def test_dataloader_worker_error_is_one_line(tmp_path):
    data = tmp_path / "data"
    _folder_data_with_a_bad_image(data)
    rec = tiny_recipe(tmp_path, "w", iterations=4)
    rec["data"] = {"dataset": "folder", "root": str(data), "workers": 2, "augment": {"scale": [1.0, 1.0]}}
    rec["train"]["batch_size"] = 4
    f = tmp_path / "w.yaml"
    f.write_text(yaml.safe_dump(rec))
    res = CliRunner().invoke(cli, ["train", str(f), "-q"])
    assert res.exit_code == 2
    lines = _lines(res.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "2.png" in lines[0], res.output


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    f = _recipe_file(tmp_path, "full", iterations=6, eval_interval=100, ckpt_interval=2)
    real_save = torch.save
    calls = []

    def save(obj, fh, *a, **k):
        calls.append("optimizer" in obj)  # only last.pt holds the optimizer state
        if sum(calls) >= 2:  # the second last.pt: step 4
            raise OSError(28, "No space left on device")
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    res = CliRunner().invoke(cli, ["train", str(f), "-q"])
    lines = _lines(res.output)
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and "No space left on device" in lines[0] and "last.pt" in lines[0]
    run = tmp_path / "runs" / "full"
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert not list(run.glob(".*.tmp"))


def test_unsafe_checkpoint_refusal_gives_the_full_reason(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "x": os.system}, evil)
    with pytest.raises(ApdError) as exc:
        load_checkpoint(evil)
    msg = str(exc.value)
    assert "\n" not in msg and "system" in msg and "GLOBAL" in msg


def test_class_count_mismatch_is_one_line(tmp_path):
    from apd_edge.models import build_model

    model = build_model("espnet", 12, alpha2=1, alpha3=1)
    ckpt = {"model_name": "espnet", "model_kwargs": {"alpha2": 1, "alpha3": 1}, "num_classes": 11,
            "model": model.state_dict()}
    with pytest.raises(ApdError) as exc:
        model_from_checkpoint(ckpt)
    msg = str(exc.value)
    assert "\n" not in msg and "12" in msg and "11" in msg and "classes" in msg


def test_unexpected_exception_is_one_line_with_a_debug_switch(tmp_path, monkeypatch):
    import apd_edge.cli.recipe as recipe_cli

    def boom(_):
        raise RuntimeError("boom in the registry\nsecond line")

    monkeypatch.setattr(recipe_cli, "validate_names", boom)
    f = _recipe_file(tmp_path)
    res = CliRunner().invoke(cli, ["recipe", "check", str(f)])
    assert res.exit_code == 1
    assert _lines(res.output)[-1].startswith("error: RuntimeError: boom in the registry")
    assert "Traceback" not in res.output and "--debug" in res.output
    res = CliRunner().invoke(cli, ["--debug", "recipe", "check", str(f)])
    assert isinstance(res.exception, RuntimeError)  # --debug lets the traceback through


# ------------------------------------------------------------------------------------------------ 6. demo


def test_demo_sigterm_finishes_the_video(tmp_path, folder_bundle):
    bundle = folder_bundle[0]
    out = tmp_path / "x.mp4"
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from apd_edge.demo.capture import FrameSource
        from apd_edge.demo.run import run_demo

        class Src(FrameSource):
            i = 0
            def read(self):
                self.i += 1
                if self.i == 4:
                    os.kill(os.getpid(), signal.SIGTERM)
                return np.full((64, 64, 3), self.i * 10, np.uint8) if self.i < 50 else None

        stats = run_demo({str(bundle)!r}, "x", save={str(out)!r}, frame_source=Src())
        print("frames", stats.frames, stats.interrupted)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    import cv2

    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert 3 <= n < 49 and f"frames {n} True" in proc.stdout


class _FiniteCap:
    """An HTTP video of ``n`` frames: FFmpeg reports the frame count, reads fail at the end."""

    def __init__(self, n: int = 5):
        self.i, self.n = 0, n

    def isOpened(self):
        return True

    def get(self, prop):
        import cv2

        return float(self.n) if prop == cv2.CAP_PROP_FRAME_COUNT else 25.0

    def read(self):
        time.sleep(0.01)
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, np.full((4, 4, 3), self.i, np.uint8)

    def release(self):
        pass


@pytest.mark.parametrize("loop", [False, True])
def test_finite_network_video_ends_unless_loop(loop):
    from apd_edge.demo.capture import LiveSource

    opened = []

    def opener(target, timeout):
        opened.append(1)
        return _FiniteCap()

    src = LiveSource("http://user:pw@cam/clip.mp4", reconnect_s=3.0, frame_timeout_s=5.0, _opener=opener, loop=loop)
    t0 = time.monotonic()
    frames = 0
    try:
        while time.monotonic() - t0 < 3.0:
            if src.read() is None:
                break
            frames += 1
    finally:
        src.close()
    if loop:
        assert len(opened) >= 2 and frames > 5
    else:
        assert len(opened) == 1 and 1 <= frames <= 5 and time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("url,secret", [
    ("rtsp://admin:pa#ss@cam.local:554/stream", "pa#ss"),
    ("rtsp://admin:p/w@cam.local/stream", "p/w"),
    ("http://admin:p@w@cam.local/video.mjpg", "p@w"),
    ("rtsp://admin:p?x=1@cam.local/s", "p?x=1"),
    ("rtsp://user%40corp:s3cr%2Ft@cam/s", "s3cr%2Ft"),
])
def test_redaction_parses_the_url(url, secret):
    from apd_edge.demo.capture import redact_url

    red = redact_url(f"cannot open {url} now")
    assert secret not in red and "admin" not in red and "cam" in red and red.startswith("cannot open ")
    assert red.endswith(" now")


# ------------------------------------------------------------------------------------------------ 7. smaller ones


def test_stale_temp_files_are_removed_on_start(tmp_path):
    kw = dict(iterations=2, eval_interval=2, ckpt_interval=2)
    run = train(recipe_from_dict(tiny_recipe(tmp_path, "s", **kw)), progress=False)
    stale = [run / ".last.pt.abc123.tmp", run / ".best.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    Trainer(recipe_from_dict(tiny_recipe(tmp_path, "s", **kw)), resume=True, progress=False).close()
    assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("name", ["../../x", "", "a/b", "..", ".hidden", "x\ny"])
def test_run_names_are_validated(name):
    with pytest.raises(RecipeError, match="name"):
        recipe_from_dict({"name": name})


def test_bench_without_a_row_exits_non_zero(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    res = CliRunner().invoke(cli, ["bench", str(broken), "--iters", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "error: " in res.output


def test_data_check_lists_every_bad_file(tmp_path):
    from helpers.data import camvid, mask_from, png

    root = camvid(tmp_path / "cv")
    for rel in ("trainannot/img0.png", "trainannot/img1.png", "valannot/img0.png"):
        png(root / rel, mask_from([0, 42]))
    res = CliRunner().invoke(cli, ["data", "check", f"camvid:{root}", "--no-progress"])
    assert res.exit_code == 2
    for rel in ("trainannot/img0.png", "trainannot/img1.png", "valannot/img0.png"):
        assert rel in res.output
    assert "3 bad files" in res.output
    res = CliRunner().invoke(cli, ["data", "check", f"camvid:{root}", "--no-progress", "--max-errors", "2"])
    assert res.exit_code == 2 and "valannot/img0.png" not in res.output and "1 more" in res.output


def test_one_line_names_os_errors_and_worker_errors():
    from apd_edge.cli.main import one_line

    assert one_line(OSError(28, "No space left on device", "/x/last.pt")) == \
        "OSError: No space left on device: /x/last.pt"
    wrapped = ApdError("Caught ApdError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
                       '  File "x.py", line 1, in f\n    raise ApdError("bad")\n'
                       "apd_edge.errors.ApdError: unreadable image: /d/3.png\n")
    assert one_line(wrapped) == "unreadable image: /d/3.png (in a data loader worker)"
    assert one_line(ApdError("two\nlines")) == "two lines"


def test_resume_accepts_export_changes_refuses_training_changes():
    from apd_edge.engine.recipe_diff import check_resume_recipe

    stored = {"train": {"lr": 0.01}, "export": {"calib_method": "percentile"}}
    given = {"train": {"lr": 0.01}, "export": {"calib_method": "auto"}}
    assert check_resume_recipe(stored, given) == [("export.calib_method", "percentile", "auto")]
    with pytest.raises(ApdError, match="train.lr 0.01 -> 0.02"):
        check_resume_recipe(stored, {**given, "train": {"lr": 0.02}})
