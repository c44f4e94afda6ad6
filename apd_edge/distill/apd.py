"""Adaptive Perspective Distillation (APD), as specified in docs/apd-method.md.

Per training batch:
  f_s = n(g_s(F_s)), f_t = n(g_t(F_t))            unit features at the teacher's feature size (h, w)
  P[c] = n(sum of f over pixels labelled c)       one prototype per class present (labels nearest-
                                                  downsampled to (h, w), ignore excluded)
  z[c] = tau * <f, P[c]>                          adaptive logits, softmax over the present classes
  L_pk = KL(softmax(z_t) || softmax(z_s))         every pixel of the feature map (ignored ones too)
  L_pa = 0.5 * mean_c (1 - <P_s[c], P_t[c]>)
  L_tp = CE(upsample(scatter(z_t into C classes)), labels)   trains g_t only, with its own Adam
  L_kd = pixel-wise KD on the final logits (shared with ``kd``)

Reductions (``prototype_scope``):
  * ``batch`` (released code): prototypes pooled over the whole per-process batch; L_pk is the
    element-wise mean over B x N x h x w (N = classes present in the batch), i.e.
    sum of KL terms / (B * h * w * N); L_pa averages over those N classes.
  * ``image`` (paper): prototypes per image, each image's pixels classified by its own N_b
    prototypes. Each image gets the released reduction on its own tensor, sum_b / (h * w * N_b), and
    L_pk is the mean of that over the images with N_b > 0; L_pa likewise is the per-image mean over
    its N_b classes, averaged over those images. With one image both scopes are identical.
A batch (or image) with no valid class contributes zero (no NaN); the terms stay attached to the
graph so every student-side parameter still receives a (zero) gradient, which DDP needs.

Everything is vectorised over classes: one-hot masks (G x n x C) and batched matmuls, where G = 1
group of n = B*h*w pixels for ``batch`` and G = B groups of n = h*w pixels for ``image``.

Distributed training: the prototypes are computed per process from its local batch (as released).
g_t and its Adam live in an unregistered holder (like the teacher): DDP never sees them, so g_t's
own backward inside ``forward`` cannot disturb DDP's reducer. Their gradients are averaged across
processes by one explicit all-reduce per step (the release wrapped g_t in its own DDP), and g_t is
broadcast from rank 0 before its first update, so all ranks keep the same g_t. g_s is a registered
parameter of the distiller, not of the student: wrap the whole distiller in DDP, or (as the engine
does) wrap the student and average g_s's gradients by hand; tests/test_distill_ddp.py checks both.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import Recipe
from ..errors import ApdError
from .base import DISTILLERS, Distiller
from .kd import kl_terms, pixel_kd_loss


def make_projector(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Conv1x1(c_in -> hidden) -> ReLU -> Conv1x1(hidden -> c_out), biases on (as released).

    A 1x1 convolution is a per-pixel linear map: it is applied as ``nn.Linear`` to pixel-major
    (pixels x channels) features, which is the layout the prototype matmuls want anyway.
    """
    return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c_out))


def pixel_major(feat: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> (B*h*w) x C (a view when the tensor is channels-last)."""
    return feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of B x H x W integer labels to ``size``."""
    if labels.shape[-2:] == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def class_masks(labels: torch.Tensor, num_classes: int, ignore_index: int, scope: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot masks ``(G, n, C)`` float and ``present (G, C)`` bool for B x h x w labels.

    Labels equal to ``ignore_index`` (or outside [0, C)) belong to no class.
    """
    groups = 1 if scope == "batch" else labels.shape[0]
    y = labels.reshape(groups, -1)
    valid = (y >= 0) & (y < num_classes) & (y != ignore_index)
    y = torch.where(valid, y, torch.full_like(y, num_classes))
    onehot = F.one_hot(y, num_classes + 1)[..., :num_classes].float()
    return onehot, onehot.sum(1) > 0


def to_groups(f: torch.Tensor, batch: int, scope: str) -> torch.Tensor:
    """(B*h*w) x E pixel-major -> (G, n, E): G = 1, n = B*h*w (batch) or G = B, n = h*w (image)."""
    return f.view(1 if scope == "batch" else batch, -1, f.shape[-1])


class _UnitRows(torch.autograd.Function):
    """``F.normalize(x, dim=-1)`` (eps 1e-12) with a fused backward.

    Same function and gradient as F.normalize's autograd: dx = (g - y <g, y>) / max(|x|, eps), and
    g / eps where the norm is clamped; one pass instead of autograd's chain of full-size temporaries.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        denom = norm.clamp_min(1e-12)
        y = x / denom
        ctx.save_for_backward(y, denom, norm >= 1e-12)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        y, denom, through = ctx.saved_tensors
        dot = (g * y).sum(-1, keepdim=True) * through
        return (g - y * dot) / denom


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """n(v) = v / ||v||_2 over the last dimension (as ``F.normalize(x, dim=-1)``)."""
    return _UnitRows.apply(x)


class _AdaptiveHead(torch.autograd.Function):
    """Prototypes ``P = n(onehot^T f)`` and logits ``z = tau <f, P>`` in one node.

    Same values and gradients as the plain bmm / normalize chain; the backward orders its matmuls
    so that none has an output only C wide (dP = dz^T f, not f^T dz), and sums f's two gradient
    paths in one matmul: df = [tau dz, onehot] @ [P; dS].
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, onehot: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        sums = torch.bmm(onehot.transpose(1, 2), f)
        norm = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)
        denom = norm.clamp_min(1e-12)
        protos = sums / denom
        z = tau * torch.bmm(f, protos.transpose(1, 2))
        ctx.save_for_backward(f, onehot, protos, denom, norm >= 1e-12)
        ctx.tau = tau
        return protos, z

    @staticmethod
    def backward(ctx, g_protos: torch.Tensor, g_z: torch.Tensor):  # unused outputs get zero grads
        f, onehot, protos, denom, through = ctx.saved_tensors
        tau = ctx.tau
        g_p = torch.bmm(g_z.transpose(1, 2), f).mul_(tau).add_(g_protos)
        dot = (g_p * protos).sum(-1, keepdim=True) * through
        g_sums = (g_p - protos * dot) / denom
        g_f = torch.bmm(torch.cat([g_z * tau, onehot], 2), torch.cat([protos, g_sums], 1))
        return g_f, None, None


def adaptive_head(f: torch.Tensor, onehot: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, C, E) unit prototypes n(sum of unit features per class) (absent classes: zero vectors) and
    (G, n, C) logits tau * <f(x), P[c]>."""
    return _AdaptiveHead.apply(f, onehot, tau)


def adaptive_kl(z_t: torch.Tensor, z_s: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_t) || softmax(z_s)) over the present classes, reduced as described in the module doc."""
    neg = torch.finfo(z_s.dtype).min
    absent = ~present[:, None, :]
    logp_t = F.log_softmax(z_t.masked_fill(absent, neg), dim=-1)
    logp_s = F.log_softmax(z_s.masked_fill(absent, neg), dim=-1)
    terms = torch.where(absent, torch.zeros_like(logp_s), kl_terms(logp_t, logp_s))
    n_cls = present.sum(1)  # N per group
    per_group = terms.sum((1, 2)) / (terms.shape[1] * n_cls).clamp(min=1)
    return _mean_over_valid(per_group, n_cls)


def prototype_alignment(p_s: torch.Tensor, p_t: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """0.5 * mean over present classes of (1 - <P_s[c], P_t[c]>), per group, then over valid groups."""
    gap = (1.0 - (p_s * p_t).sum(-1)) * present
    n_cls = present.sum(1)
    return _mean_over_valid(0.5 * gap.sum(1) / n_cls.clamp(min=1), n_cls)


def _mean_over_valid(per_group: torch.Tensor, n_cls: torch.Tensor) -> torch.Tensor:
    valid = (n_cls > 0).to(per_group.dtype)
    return (per_group * valid).sum() / valid.sum().clamp(min=1)


def scatter_logits(z: torch.Tensor, present: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """(G, n, C) adaptive logits -> B x C x h x w with absent classes set to 0."""
    z = z * present[:, None, :].to(z.dtype)
    return z.reshape(batch, size[0], size[1], z.shape[-1]).permute(0, 3, 1, 2).contiguous()  # faster upsample


@functools.lru_cache(maxsize=32)
def interp_matrix(n_in: int, n_out: int, align_corners: bool, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bilinear resizing, taken from ``F.interpolate`` itself (resizing an
    identity), so that ``U_h @ x @ U_w^T`` is ``F.interpolate(x, mode="bilinear")`` up to float rounding."""
    with torch.inference_mode(False), torch.no_grad():  # cached: never an inference-mode tensor
        eye = torch.eye(n_in, dtype=dtype, device=device).reshape(1, n_in, n_in, 1)
        resized = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=align_corners)
        return resized[0, :, :, 0].t().contiguous()


class _UpsampledCE(torch.autograd.Function):
    """``F.cross_entropy(up, labels, ignore_index)`` (mean over non-ignored pixels) of the bilinear
    upsampling ``up = U_h z U_w^T``, with the softmax gradient fused: dz = U_h^T (softmax(up) - onehot)
    U_w * valid / count. Bilinear resizing is separable and linear, so the two small matmuls are the
    same map as ``F.interpolate`` (and their transposes its backward)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, labels: torch.Tensor, u_h: torch.Tensor, u_w: torch.Tensor,
                ignore_index: int) -> torch.Tensor:
        up = torch.matmul(u_h, torch.matmul(z, u_w.t()))
        valid = labels != ignore_index
        target = torch.where(valid, labels, torch.zeros_like(labels))[:, None]
        top = up.amax(1, keepdim=True)
        picked = up.gather(1, target)
        e = up.sub_(top).exp_()  # up is not needed any more: no second B x C x H x W buffer
        total = e.sum(1, keepdim=True)
        nll = (total.log() + top - picked)[:, 0]
        count = valid.sum()
        ctx.save_for_backward(e, total, target, valid, count, u_h, u_w)
        return torch.where(valid, nll, torch.zeros_like(nll)).sum() / count

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        e, total, target, valid, count, u_h, u_w = ctx.saved_tensors
        scale = valid[:, None].to(e.dtype) * (g / count)
        d_up = (e / total).scatter_add_(1, target, -torch.ones_like(target, dtype=e.dtype)).mul_(scale)
        d_z = torch.matmul(torch.matmul(u_h.t(), d_up), u_w)
        return d_z, None, None, None, None


def upsampled_cross_entropy(z: torch.Tensor, labels: torch.Tensor, align_corners: bool,
                            ignore_index: int) -> torch.Tensor:
    """CE(bilinear upsample of B x C x h x w logits ``z`` to the labels' size, labels), mean over the
    non-ignored pixels; the caller ensures at least one."""
    (h, w), (hh, ww) = z.shape[-2:], labels.shape[-2:]
    u_h = interp_matrix(h, hh, align_corners, z.device, z.dtype)
    u_w = interp_matrix(w, ww, align_corners, z.device, z.dtype)
    return _UpsampledCE.apply(z, labels, u_h, u_w, ignore_index)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class TeacherProjector(nn.Module):
    """g_t and its own Adam optimizer (kept outside the distiller's registered parameters)."""

    def __init__(self, c_in: int, hidden: int, c_out: int, lr: float, betas: tuple[float, float]) -> None:
        super().__init__()
        self.net = make_projector(c_in, hidden, c_out)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=betas)
        self._synced = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def prepare(self) -> None:
        """Under torch.distributed, give every rank rank 0's g_t once, before its first training forward."""
        if not self._synced and _world_size() > 1:
            with torch.no_grad():
                for p in self.net.parameters():
                    dist.broadcast(p.data, src=0)
            self._synced = True

    def update(self, loss: torch.Tensor | None) -> None:
        """Backpropagate ``loss`` into g_t only and take one Adam step (None: this process has no loss).

        Under torch.distributed every process must call this every training step: gradients are
        averaged over the processes that had a loss (one all-reduce), and nobody steps if none had.
        """
        params = list(self.net.parameters())
        world = _world_size()
        if world > 1 and not self._synced:
            raise RuntimeError("TeacherProjector.prepare() must run before g_t's first forward under torch.distributed")
        self.optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            grads = torch.autograd.grad(loss, params)
        else:
            grads = [torch.zeros_like(p) for p in params]
        if world > 1:
            flag = params[0].new_full((1,), 0.0 if loss is None else 1.0)
            flat = torch.cat([g.reshape(-1) for g in grads] + [flag])
            dist.all_reduce(flat)
            count = float(flat[-1])
            if count == 0:
                return
            grads = [g.view_as(p) for g, p in zip((flat[:-1] / count).split([p.numel() for p in params]), params)]
        elif loss is None:
            return
        for p, g in zip(params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def move_optimizer_state(self, fn) -> None:
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if torch.is_tensor(v) and k != "step":
                    state[k] = fn(v)


@DISTILLERS.register("apd")
class APDDistiller(Distiller):
    """Task loss + kd_weight * KD + pk_weight * L_pk + pa_weight * L_pa; g_t trained by its own loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, recipe: Recipe) -> None:
        super().__init__(student, teacher, recipe)
        cfg = recipe.distill.apd
        c_s = int(getattr(student, "feat_channels", 0) or 0)
        c_t = int(getattr(teacher, "feat_channels", 0) or 0)
        if c_s <= 0:
            raise ApdError("distill.method 'apd' needs student features: "
                           f"{type(student).__name__} has no feat_channels")
        if c_t <= 0:
            raise ApdError("distill.method 'apd' needs teacher features: the teacher has no feat_channels "
                           "(for a factory teacher set teacher.feat_module)")
        if cfg.prototype_scope not in ("batch", "image"):
            raise ApdError(f"distill.apd.prototype_scope: {cfg.prototype_scope!r} is not 'batch' or 'image'")
        embed = cfg.proj_out or c_t
        self.scope = cfg.prototype_scope
        self.tau = cfg.tau
        self.student_proj = make_projector(c_s, cfg.proj_dim, embed)
        tproj = TeacherProjector(c_t, cfg.proj_dim, embed, cfg.teacher_proj_lr, tuple(cfg.teacher_proj_betas))
        object.__setattr__(self, "_tproj", tproj)  # unregistered: out of parameters() and DDP

    @property
    def teacher_proj(self) -> TeacherProjector:
        return self._tproj

    # ---------------------------------------------------------------- interface
    def extra_modules(self) -> list[nn.Module]:
        return [self.student_proj]

    def _unregistered(self) -> list[nn.Module]:
        return super()._unregistered() + [self._tproj]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._tproj.move_optimizer_state(fn)
        return self

    def extra_state_dict(self) -> dict:
        """Both projectors and g_t's Adam state: student weights + this is a complete APD state."""
        return {"student_proj": self.student_proj.state_dict(),
                "teacher_proj": self._tproj.net.state_dict(),
                "teacher_proj_optimizer": self._tproj.optimizer.state_dict()}

    def load_extra_state_dict(self, state: dict) -> None:
        try:
            if "student_proj" in state:
                self.student_proj.load_state_dict(state["student_proj"])
            if "teacher_proj" in state:
                self._tproj.net.load_state_dict(state["teacher_proj"])
            if "teacher_proj_optimizer" in state:
                self._tproj.optimizer.load_state_dict(state["teacher_proj_optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ApdError("APD distiller state does not fit this recipe's projectors "
                           f"({str(exc).splitlines()[0][:160]})") from None

    # g_t's weights also travel in the distiller's state_dict, under "teacher_proj."
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for k, v in self._tproj.net.state_dict(keep_vars=keep_vars).items():
            destination[f"{prefix}teacher_proj.{k}"] = v

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        tp = f"{prefix}teacher_proj."
        own = {k[len(tp):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(tp)]}
        expected = self._tproj.net.state_dict()
        for k, v in own.items():
            if k not in expected:
                unexpected_keys.append(tp + k)
            elif v.shape != expected[k].shape:
                error_msgs.append(f"size mismatch for {tp}{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}")
            else:
                with torch.no_grad():
                    expected[k].copy_(v)
        if strict:
            missing_keys.extend(tp + k for k in expected if k not in own)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ---------------------------------------------------------------- losses
    def distill_terms(self, s_out: dict, t_out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        dcfg = self.recipe.distill
        cfg = dcfg.apd
        parts: dict[str, torch.Tensor] = {}
        total = s_out["out"].new_zeros(())
        if dcfg.kd_weight > 0:
            kd = pixel_kd_loss(s_out["out"], t_out["out"], labels.shape[-2:], dcfg.kd_temperature,
                               dcfg.align_corners)
            total = total + dcfg.kd_weight * kd
            parts["kd"] = kd.detach()
        terms = self.apd_losses(s_out["feat"], t_out["feat"], labels, s_out["out"].shape[1])
        total = total + cfg.pk_weight * terms["apd_pk"] + cfg.pa_weight * terms["apd_pa"]
        parts.update({k: v.detach() for k, v in terms.items()})
        return total, parts

    def apd_losses(self, feat_s: torch.Tensor, feat_t: torch.Tensor, labels: torch.Tensor,
                   num_classes: int) -> dict[str, torch.Tensor]:
        """The APD terms (unweighted): ``apd_pk``, ``apd_pa`` (student side, with grad) and
        ``apd_tproj`` (g_t's loss, detached; g_t already stepped when training)."""
        b = feat_t.shape[0]
        size = tuple(feat_t.shape[-2:])
        if tuple(feat_s.shape[-2:]) != size:
            feat_s = F.interpolate(feat_s, size=size, mode="bilinear", align_corners=False)
        onehot, present = class_masks(downsample_labels(labels, size), num_classes, self.ignore_index, self.scope)
        any_valid = bool(present.any())
        dev = feat_t.device.type

        # teacher side: g_t's own loss and step; float32, outside autocast (g_t's Adam has no scaler)
        if self.training:
            self._tproj.prepare()
        with torch.autocast(device_type=dev, enabled=False), torch.set_grad_enabled(self.training):
            f_t = to_groups(unit_rows(self._tproj(pixel_major(feat_t.detach().float()))), b, self.scope)
            p_t, z_t = adaptive_head(f_t, onehot, self.tau)
            tproj_loss = None
            if any_valid:
                tproj_loss = upsampled_cross_entropy(scatter_logits(z_t, present, b, size), labels,
                                                     self.recipe.distill.align_corners, self.ignore_index)
        if self.training:
            self._tproj.update(tproj_loss)
        p_t, z_t = p_t.detach(), z_t.detach()

        # student side: gradients reach g_s and the student only
        proj_s = self.student_proj(pixel_major(feat_s))
        with torch.autocast(device_type=dev, enabled=False):
            f_s = to_groups(unit_rows(proj_s.float()), b, self.scope)
            p_s, z_s = adaptive_head(f_s, onehot, self.tau)
            pk = adaptive_kl(z_t, z_s, present)
            pa = prototype_alignment(p_s, p_t, present)
        zero = z_t.new_zeros(())
        return {"apd_pk": pk, "apd_pa": pa,
                "apd_tproj": tproj_loss.detach() if tproj_loss is not None else zero}
