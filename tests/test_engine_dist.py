"""Two CPU processes with gloo: DDP student + averaged projector gradients keep the ranks identical."""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from helpers.training import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


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
def test_two_gloo_processes_end_with_identical_weights(tmp_path, capfd):
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
    # the trainer asked for SyncBN (sync_bn=True) and, on CPU, said once (rank 0) that it keeps local BN
    assert capfd.readouterr().err.count("sync_bn: skipped on CPU") == 1


def _bn_types(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def test_sync_bn_conversion_keeps_weights_and_still_trains_and_evaluates_on_cpu():
    """train.sync_bn under torchrun on CUDA: every BatchNorm becomes SyncBatchNorm with the same parameters
    and statistics, and the state dict stays the plain model's (checkpoints, eval and export need no SyncBN)."""
    import copy

    from apd_edge.engine.distributed import DistInfo, convert_sync_bn
    from apd_edge.models import build_model

    torch.manual_seed(0)
    model = build_model("espnet", 10, alpha2=1, alpha3=1)
    with torch.no_grad():  # non-default statistics, so that a conversion that loses them shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ref = copy.deepcopy(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    logs: list[str] = []
    # one process: nothing to synchronise; on CPU (gloo): SyncBatchNorm cannot run, said once in the log
    assert convert_sync_bn(model, torch.device("cuda"), DistInfo(), logs.append) is model and not logs
    assert convert_sync_bn(model, torch.device("cpu"), DistInfo(0, 2, 0, True), logs.append) is model
    assert _bn_types(model) == {"BatchNorm2d"} and logs == [
        "sync_bn: skipped on CPU (SyncBatchNorm needs CUDA); each process keeps its own BN statistics"]

    synced = convert_sync_bn(model, torch.device("cuda"), DistInfo(0, 2, 0, True), logs.append)
    assert _bn_types(synced) == {"SyncBatchNorm"} and n_bn > 10
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    state = {k: v.clone() for k, v in synced.state_dict().items()}
    assert state.keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(state[k], v), k
    plain = build_model("espnet", 10, alpha2=1, alpha3=1)
    plain.load_state_dict(state, strict=True)

    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2, 32, 32))
    synced.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(synced(x), ref(x))
    # without a process group SyncBatchNorm normalises with the local batch: the same step as plain BN
    synced.train(), ref.train()
    for m in (synced, ref):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        torch.nn.functional.cross_entropy(m(x)["out"], y).backward()
        opt.step()
    for (k, a), b in zip(synced.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert not torch.equal(synced.state_dict()["bn3.0.running_mean"], state["bn3.0.running_mean"])
