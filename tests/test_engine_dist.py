"""Two CPU processes with gloo: DDP student + averaged projector gradients keep the ranks identical."""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from test_engine_train import _one_thread, tiny_recipe  # noqa: F401  (fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, recipe_dict: dict, out_dir: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from apd_edge.config import recipe_from_dict
    from apd_edge.engine.trainer import Trainer

    trainer = Trainer(recipe_from_dict(recipe_dict), distill=True, progress=False)
    try:
        trainer.fit()
        state = {"student": {k: v.clone() for k, v in trainer.student.state_dict().items()},
                 "extra": trainer.distiller.extra_state_dict(), "step": trainer.step,
                 "bn_stat": trainer.student.bn3[0].running_mean.clone()}
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        trainer.close()


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    recipe = tiny_recipe(tmp_path, "ddp", iterations=3, batch_size=4, log_interval=1, eval_interval=3,
                         ckpt_interval=3, sync_bn=True)
    recipe["teacher"] = {"name": "espnet", "kwargs": {"alpha2": 1, "alpha3": 1}}
    recipe["distill"] = {"method": "apd", "apd": {"proj_dim": 32}}
    mp.spawn(_worker, args=(2, _free_port(), recipe, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["step"] == r1["step"] == 3
    init = torch.load(tmp_path / "runs" / "ddp" / "last.pt", weights_only=True)
    for k, v in r0["student"].items():
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(v, r1["student"][k], atol=1e-6), k
    for part in ("student_proj", "teacher_proj"):
        for k, v in r0["extra"][part].items():
            assert torch.allclose(v, r1["extra"][part][k], atol=1e-6), (part, k)
    # the ranks saw different images: the gradients were averaged, not merely equal
    assert len(init["rng"]) == 2 and not torch.equal(init["rng"][0]["torch"], init["rng"][1]["torch"])
    # rank 0 alone wrote the run folder, with the averaged-over-ranks metrics
    assert (tmp_path / "runs" / "ddp" / "summary.json").is_file()
