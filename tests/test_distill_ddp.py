"""APD under DistributedDataParallel (2 CPU processes, gloo): g_t's inner step must not trip DDP
(whole distiller wrapped, or student only as the engine does), a rank without any valid class must
not hang, and every rank ends with identical weights (student, g_s and g_t)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from apd_edge.distill import build_distiller
from apd_edge.distill.apd import TeacherProjector
from helpers.distill import TinySeg, make_recipe

C = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proj_loss(tp_net, seed: int) -> torch.Tensor:
    x = torch.randn(18, 4, generator=torch.Generator().manual_seed(seed))
    return tp_net(x).pow(2).mean()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # 1) TeacherProjector.update: broadcast from rank 0, average over ranks that have a loss
        torch.manual_seed(rank)  # different inits: the first update must broadcast rank 0's
        tp = TeacherProjector(4, 4, 4, 1e-2, (0.9, 0.99))
        tp.prepare()
        tp.update(_proj_loss(tp, 10 + rank))
        tp.update(_proj_loss(tp, 20) if rank == 0 else None)  # rank 1 has no valid class this step
        tp_params = [p.detach().clone() for p in tp.parameters()]

        # 2) the whole APD distiller inside DDP; rank 1's labels are all ignore
        torch.manual_seed(0)
        d = build_distiller(TinySeg(C, 4), TinySeg(C, 4), make_recipe(proj_dim=4)).train()
        ddp = torch.nn.parallel.DistributedDataParallel(d)
        opt = torch.optim.SGD([g for g in d.param_groups(0.1, 10.0)], lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)
        for _ in range(2):
            images = torch.randn(2, 3, 16, 16, generator=gen)
            labels = torch.randint(0, C, (2, 16, 16), generator=gen) if rank == 0 else torch.full((2, 16, 16), 255)
            loss = ddp(images, labels)
            opt.zero_grad()
            loss.total.backward()
            opt.step()
        # 3) the engine's layout: DDP around the student only, g_s gradients averaged by hand
        torch.manual_seed(0)
        d2 = build_distiller(TinySeg(C, 4), TinySeg(C, 4), make_recipe(proj_dim=4)).train()
        d2.student = torch.nn.parallel.DistributedDataParallel(d2.student)
        opt2 = torch.optim.SGD(list(d2.parameters()), lr=0.1)
        gen = torch.Generator().manual_seed(200 + rank)
        for _ in range(2):
            images = torch.randn(2, 3, 16, 16, generator=gen)
            labels = torch.randint(0, C, (2, 16, 16), generator=gen) if rank == 0 else torch.full((2, 16, 16), 255)
            loss = d2(images, labels)
            assert torch.isfinite(loss.total)
            opt2.zero_grad()
            loss.total.backward()
            for p in d2.student_proj.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
            opt2.step()
        torch.save({"tp": tp_params, "d": dict(d.state_dict()), "d2": dict(d2.state_dict())},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _both_workers(rank: int, world: int, ports: tuple[int, int], out_dir: str) -> None:
    _worker(rank, world, ports[0], out_dir)
    _baseline_worker(rank, world, ports[1], out_dir)


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory):
    """One spawn of two gloo processes for both tests below (a process start costs more than their work)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_both_workers, args=(2, (_free_port(), _free_port()), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.slow
def test_apd_under_ddp_two_gloo_processes(ddp_out):
    r0, r1 = (torch.load(ddp_out / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    # reference for the TeacherProjector updates, in one process
    torch.manual_seed(0)
    ref = TeacherProjector(4, 4, 4, 1e-2, (0.9, 0.99))
    params = list(ref.parameters())
    g0 = torch.autograd.grad(_proj_loss(ref, 10), params)
    g1 = torch.autograd.grad(_proj_loss(ref, 11), params)
    for p, a, b in zip(params, g0, g1):
        p.grad = (a + b) / 2
    ref.optimizer.step()
    ref.update(_proj_loss(ref, 20))  # step 2: only rank 0 contributed
    for a, b, r in zip(r0["tp"], r1["tp"], params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, r.detach(), rtol=1e-5, atol=1e-6)

    d0, d1 = r0["d"], r1["d"]
    assert any(k.startswith("teacher_proj.") for k in d0) and any(k.startswith("student_proj.") for k in d0)
    for a, b in ((d0, d1), (r0["d2"], r1["d2"])):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------------------------------------
# SKD and IFVD: the critic is held outside DDP, broadcast from rank 0 and stepped on averaged gradients
def _baseline_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from apd_edge.config import recipe_from_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        saved = {}
        for method, wrap in (("skd", "student"), ("ifvd", "student"), ("skd", "distiller")):
            r = recipe_from_dict({"distill": {"method": method, method: {"holistic": {"channels": 4}}},
                                  "model": {"aux_weights": []}, "train": {"iterations": 10}})
            torch.manual_seed(0)
            d = build_distiller(TinySeg(C, 4), TinySeg(C, 6), r).train()
            with torch.no_grad():  # a different critic on rank 1: the first critic step must broadcast rank 0's
                for p in d.holistic.critic.parameters():
                    p.add_(0.1 * rank)
            opt = torch.optim.SGD(d.param_groups(0.05, 10.0), lr=0.05)
            if wrap == "student":  # the engine's layout
                d.student = torch.nn.parallel.DistributedDataParallel(d.student)
                model = d
            else:
                model = torch.nn.parallel.DistributedDataParallel(d)
            gen = torch.Generator().manual_seed(300 + rank)
            for i in range(3):
                images = torch.randn(2, 3, 16, 16, generator=gen)
                labels = torch.randint(0, C, (2, 16, 16), generator=gen)
                if rank == 1 and i == 0:
                    labels.fill_(255)  # a rank without any labelled pixel
                out = model(images, labels)
                assert torch.isfinite(out.total) and {"adv_d", "adv_g"} <= set(out.parts)
                opt.zero_grad()
                out.total.backward()
                opt.step()
            saved[f"{method}_{wrap}"] = {"state": {k.replace("student.module.", "student."): v
                                                   for k, v in d.state_dict().items()},
                                         "steps": d.holistic.steps}
        torch.save(saved, f"{out_dir}/baselines_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_skd_and_ifvd_under_ddp_two_gloo_processes(ddp_out):
    r0, r1 = (torch.load(ddp_out / f"baselines_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(r0) == {"skd_student", "ifvd_student", "skd_distiller"}
    for run in r0:
        a, b = r0[run]["state"], r1[run]["state"]
        assert r0[run]["steps"] == r1[run]["steps"] == 3
        assert any(k.startswith("critic.") for k in a) and any(k.startswith("student.") for k in a)
        for k in a:  # student, critic weights and spectral-norm vectors: identical on both ranks
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k, run=run: f"{run} {k}: {m}")
