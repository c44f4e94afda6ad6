"""The holistic (adversarial) term shared by SKD and IFVD: a Wasserstein critic on score maps.

SKD (Liu et al., CVPR 2019 / TPAMI 2020) treats the student as a generator of score maps and trains a
critic D to tell them from the teacher's (Wasserstein distance with a gradient penalty, WGAN-GP); the
student then maximises D on its own map. IFVD (Wang et al., ECCV 2020) reuses the same term. Facts from
the released code (irfanICMLL/structure_knowledge_distillation, YukangWang/IFVD), written here anew:

  critic: BN on the input (batch statistics), then four spectral-normalised 4x4/2 convolutions
          (64, 128, 256, 512 channels, LeakyReLU 0.1), a SAGAN self-attention block after the third and
          the fourth, and a plain 4x4 convolution to one channel; D(x) is the mean of that map.
  critic loss:  L_D = critic_weight * ( mean D(S) - mean D(T) + gp_weight * GP ),
                GP = mean_b (||dD/dx (alpha T + (1 - alpha) S)||_2 - 1)^2, alpha ~ U(0, 1) per image
  student term: L_adv = weight * ( -mean D(S) )
  one critic step per student step, its lr poly-decayed over train.iterations like the student's.

Departures, on purpose:
  * The critic sees the score maps at 1/8 of the input (the release feeds the native stride-8 logits;
    our models give logits at input size, so both maps are resized back bilinearly), enlarged so the short
    side is at least 64: the four stride-2 convolutions and the final 4x4 one need that much.
  * ``with_image: true`` (default) conditions the critic on the image, concatenated to the score map
    (the paper's conditional discriminator); the releases feed the score map alone (``with_image: false``).
    The gradient penalty differentiates with respect to the score map only (the image is the condition).
  * The input BN keeps no running statistics: train and eval both use batch statistics, as the critic
    does in the release while training, and ranks never disagree on buffers.
  * Order within a step: the critic steps first on this batch (detached maps), then the student's term
    uses the updated critic. The release steps the student first; stepping the critic inside the
    distiller's forward (as APD's teacher projector does) needs no hook in the training loop.

The critic and its optimizer are held unregistered (out of ``parameters()``, DDP, the student's
optimizer, the student's state and exports) and follow ``.to()``. Under torch.distributed the critic is
broadcast from rank 0 before its first step and its gradients are averaged by one all-reduce per step.
Its weights travel in the distiller's ``state_dict`` under ``critic.`` and, with its optimizer state and
step counter, in ``extra_state_dict``: a resumed run continues exactly.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..config import HolisticConfig, Recipe
from ..errors import ApdError
from .base import Distiller

MIN_SIDE = 64  # the critic's four stride-2 convolutions and final 4x4 convolution need a 64 px short side
INPUT_STRIDE = 8  # score maps are compared at 1/8 of the input, as the release's stride-8 logits


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SelfAttention(nn.Module):
    """SAGAN self-attention: x + gamma * V softmax(Q^T K)^T, gamma starting at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B x N x C'
        k = self.key(x).flatten(2)  # B x C' x N
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # B x N x N
        out = torch.bmm(self.value(x).flatten(2), attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out


class Critic(nn.Module):
    """The Wasserstein critic (see the module docstring); returns a B x 1 x h x w map."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        self.pre = nn.BatchNorm2d(in_channels, track_running_stats=False)
        chans = [in_channels, width, width * 2, width * 4, width * 8]
        self.convs = nn.ModuleList(spectral_norm(nn.Conv2d(a, b, 4, 2, 1)) for a, b in zip(chans, chans[1:]))
        self.attn3 = SelfAttention(chans[3])
        self.attn4 = SelfAttention(chans[4])
        self.last = nn.Conv2d(chans[4], 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        for i, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x), 0.1)
            if i == 2:
                x = self.attn3(x)
            elif i == 3:
                x = self.attn4(x)
        return self.last(x)


def critic_size(size: tuple[int, int]) -> tuple[int, int]:
    """The critic's input size for an input of ``size``: 1/8, short side enlarged to >= 64."""
    h, w = (max(1, math.ceil(s / INPUT_STRIDE)) for s in size)
    scale = max(1.0, MIN_SIDE / min(h, w))
    return math.ceil(h * scale), math.ceil(w * scale)


@contextmanager
def _frozen(module: nn.Module):
    """Run ``module`` as a constant: gradients flow to its input, none to its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class HolisticTerm(nn.Module):
    """The critic, its own optimizer (SGD or Adam) and step counter; held outside the distiller's tree."""

    def __init__(self, num_classes: int, cfg: HolisticConfig, iterations: int, poly_power: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.iterations = int(iterations)
        self.poly_power = float(poly_power)
        self.critic = Critic(num_classes + (3 if cfg.with_image else 0), cfg.channels)
        params = list(self.critic.parameters())
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.steps = 0  # critic steps taken (drives its poly schedule)
        self._synced = False

    # -- inputs ---------------------------------------------------------------------------------
    def inputs(self, s_logits: torch.Tensor, t_logits: torch.Tensor, images: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(student map, teacher map, condition) at the critic's size, float32; the student map keeps its graph."""
        size = critic_size(tuple(t_logits.shape[-2:]))

        def resize(x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear",
                                                                       align_corners=False)

        cond = None
        if self.cfg.with_image:
            if images is None:
                raise ApdError("distill holistic term: with_image is set but no images were given")
            cond = resize(images.detach())
        return resize(s_logits), resize(t_logits.detach()), cond

    @staticmethod
    def _join(score: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return score if cond is None else torch.cat([score, cond], 1)

    def score(self, s: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """mean D(student map): gradients reach the student map, never the critic's parameters."""
        with _frozen(self.critic):
            return self.critic(self._join(s, cond)).mean()

    # -- the critic's own step --------------------------------------------------------------------
    def critic_loss(self, s: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_D on detached maps (grad to the critic only) and its parts."""
        s = s.detach()
        d_real = self.critic(self._join(t, cond)).mean()
        d_fake = self.critic(self._join(s, cond)).mean()
        alpha = torch.rand(t.shape[0], 1, 1, 1, device=t.device, dtype=t.dtype)
        mix = (alpha * t + (1 - alpha) * s).requires_grad_(True)
        out = self.critic(self._join(mix, cond))
        (grad,) = torch.autograd.grad(out.sum(), mix, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss = self.cfg.critic_weight * (d_fake - d_real + self.cfg.gp_weight * gp)
        return loss, {"adv_d": loss.detach(), "adv_w": (d_real - d_fake).detach(), "adv_gp": gp.detach()}

    def prepare(self) -> None:
        """Under torch.distributed, give every rank rank 0's critic once, before its first step."""
        if not self._synced and _world_size() > 1:
            with torch.no_grad():
                for t in list(self.critic.parameters()) + list(self.critic.buffers()):
                    dist.broadcast(t.data, src=0)
            self._synced = True

    def current_lr(self) -> float:
        frac = min(self.steps, self.iterations) / max(1, self.iterations)
        return self.cfg.lr * (1.0 - frac) ** self.poly_power

    def update(self, s: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One critic step on this batch. Under torch.distributed every rank calls it every training step."""
        self.prepare()
        params = list(self.critic.parameters())
        loss, parts = self.critic_loss(s, t, cond)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        world = _world_size()
        if world > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= world
            grads = [g.view_as(p) for g, p in zip(flat.split([p.numel() for p in params]), params)]
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        for p, g in zip(params, grads):
            p.grad = g.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return parts

    def move_optimizer_state(self, fn) -> None:
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if torch.is_tensor(v) and k != "step":
                    state[k] = fn(v)

    def state(self) -> dict:
        return {"critic": self.critic.state_dict(), "critic_optimizer": self.optimizer.state_dict(),
                "critic_steps": self.steps}

    def load_state(self, state: dict) -> None:
        if "critic" in state:
            self.critic.load_state_dict(state["critic"])
        if "critic_optimizer" in state:
            self.optimizer.load_state_dict(state["critic_optimizer"])
        if "critic_steps" in state:
            self.steps = int(state["critic_steps"])


def infer_num_classes(student: nn.Module) -> int:
    """Classes of a student: its ``num_classes`` attribute, else one tiny eval-mode probe."""
    n = getattr(student, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    model = getattr(student, "module", student)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_dict(torch.zeros(1, 3, 64, 64, device=device), with_aux=False)
    finally:
        model.train(was_training)
    return int(out["out"].shape[1])


class HolisticDistiller(Distiller):
    """A distiller with the optional holistic term (``<method>.holistic``); SKD and IFVD derive from it."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, recipe: Recipe, holistic: HolisticConfig
                 ) -> None:
        super().__init__(student, teacher, recipe)
        term = None
        if holistic.enabled:
            term = HolisticTerm(infer_num_classes(student), holistic, recipe.train.iterations, recipe.train.poly_power)
        object.__setattr__(self, "_hol", term)  # unregistered: out of parameters(), DDP and the student's state
        object.__setattr__(self, "_images", None)

    @property
    def holistic(self) -> HolisticTerm | None:
        return self._hol

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        object.__setattr__(self, "_images", images)  # the critic's condition
        try:
            return super().forward(images, labels)
        finally:
            object.__setattr__(self, "_images", None)

    def holistic_terms(self, s_logits: torch.Tensor, t_logits: torch.Tensor, images: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict]:
        """weight * -mean D(student), after this step's critic update (training mode only).

        ``images`` (the critic's condition) defaults to the batch of the current ``forward``."""
        hol = self._hol
        if hol is None:
            return s_logits.new_zeros(()), {}
        parts: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=s_logits.device.type, enabled=False):
            s, t, cond = hol.inputs(s_logits, t_logits, self._images if images is None else images)
            if self.training:
                parts.update(hol.update(s, t, cond))
            adv = -hol.score(s, cond)
        parts["adv_g"] = adv.detach()
        return hol.cfg.weight * adv, parts

    # -- interface ----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "HolisticDistiller":
        super().train(mode)
        if self._hol is not None:
            self._hol.train(mode)
        return self

    def _unregistered(self) -> list[nn.Module]:
        return super()._unregistered() + ([self._hol] if self._hol is not None else [])

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self._hol is not None:
            self._hol.move_optimizer_state(fn)
        return self

    def extra_state_dict(self) -> dict:
        """The critic, its optimizer state and step counter (empty without the holistic term)."""
        return self._hol.state() if self._hol is not None else {}

    def load_extra_state_dict(self, state: dict) -> None:
        if self._hol is None:
            return
        try:
            self._hol.load_state(state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ApdError("distiller critic state does not fit this recipe "
                           f"({str(exc).splitlines()[0][:160]})") from None

    # the critic's weights also travel in the distiller's state_dict, under "critic."
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._hol is not None:
            for k, v in self._hol.critic.state_dict(keep_vars=keep_vars).items():
                destination[f"{prefix}critic.{k}"] = v

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        cp = f"{prefix}critic."
        own = {k[len(cp):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(cp)]}
        if self._hol is None:
            unexpected_keys.extend(cp + k for k in own)
        else:
            expected = self._hol.critic.state_dict()
            for k, v in own.items():
                if k not in expected:
                    unexpected_keys.append(cp + k)
                elif v.shape != expected[k].shape:
                    error_msgs.append(f"size mismatch for {cp}{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}")
                else:
                    with torch.no_grad():
                        expected[k].copy_(v)
            if strict:
                missing_keys.extend(cp + k for k in expected if k not in own)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
