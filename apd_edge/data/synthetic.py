"""The embedded default dataset: procedurally generated street scenes, licence-free, deterministic by seed.

Each scene is a one-point perspective street: a sky gradient with clouds, facades (windowed buildings,
hedges, fences) on planes parallel to the road, sidewalks with tiles and curbs, a road with lane marks
and crossings, then cars, people, poles, signs and trees drawn far-to-near so nearer objects occlude.
Colours are drawn from overlapping ranges (grey cars on grey roads, green cars, blue windows, overcast
skies), so a model has to use shape, texture and context, not colour alone. Lighting (gain, gradient,
colour temperature, cast shadows) and sensor noise vary per image.

Image ``i`` of a split depends only on (seed, split, i); nothing is cached on disk.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ApdError
from .base import SegDataset
from .registry import register

SYNTH_CLASSES = ["road", "sidewalk", "building", "sky", "vegetation", "car", "person", "pole", "sign", "fence"]
SYNTH_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [70, 130, 180], [107, 142, 35], [0, 0, 142],
                 [220, 20, 60], [153, 153, 153], [220, 220, 0], [190, 153, 153]]
ROAD, SIDEWALK, BUILDING, SKY, VEG, CAR, PERSON, POLE, SIGN, FENCE = range(10)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 px
_F = float(1 << _SHIFT)


class _Canvas:
    """Image + label drawn together; every shape paints colour and class in one call."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), np.uint8)
        self.lbl = np.zeros((h, w), np.uint8)

    def polys(self, polys: list, color, label: int | None) -> None:
        if isinstance(polys, np.ndarray):  # (N, K, 2): one conversion for the whole batch
            pts = list(np.round(polys * _F).astype(np.int32))
        else:
            pts = [np.round(np.asarray(p, np.float64) * _F).astype(np.int32) for p in polys]
        cv2.fillPoly(self.img, pts, _col(color), lineType=cv2.LINE_AA, shift=_SHIFT)
        if label is not None:
            cv2.fillPoly(self.lbl, pts, int(label), lineType=cv2.LINE_8, shift=_SHIFT)

    def rect(self, x0, y0, x1, y1, color, label) -> None:
        self.polys([[(x0, y0), (x1, y0), (x1, y1), (x0, y1)]], color, label)

    def circle(self, cx, cy, r, color, label) -> None:
        c = (int(round(cx * _F)), int(round(cy * _F)))
        rr = max(1, int(round(r * _F)))
        cv2.circle(self.img, c, rr, _col(color), -1, cv2.LINE_AA, _SHIFT)
        if label is not None:
            cv2.circle(self.lbl, c, rr, int(label), -1, cv2.LINE_8, _SHIFT)

    def line(self, p0, p1, color, label, thick: float) -> None:
        """A thick segment as a polygon (cv2 line thickness is integral)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * max(thick, 0.6) / 2
        self.polys([[p0 + n, p1 + n, p1 - n, p0 - n]], color, label)


def _col(c) -> tuple:
    return tuple(float(min(255.0, max(0.0, v))) for v in c)


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: random values on a coarse grid, bicubic upsampled."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * 0.6


class _Scene:
    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = h, w, rng  # numpy for noise fields
        self.r = random.Random(int(rng.integers(2**63)))  # python for the many scalar draws: far less overhead
        self.cv = _Canvas(h, w)
        self.hy = h * rng.uniform(0.3, 0.5)  # horizon
        self.vx = w * rng.uniform(0.3, 0.7)  # vanishing point x
        half = w * rng.uniform(0.3, 0.75)
        self.rl, self.rr = self.vx - half * rng.uniform(0.8, 1.2), self.vx + half * rng.uniform(0.8, 1.2)
        self.sl = self.rl - w * rng.uniform(0.25, 0.9)  # sidewalk outer edge at the bottom row
        self.sr = self.rr + w * rng.uniform(0.25, 0.9)

    # -- geometry -----------------------------------------------------------------------------------

    def along(self, xb: float, t: float, height: float = 0.0) -> tuple[float, float]:
        """Point at perspective scale t on the line from the vanishing point to (xb, H), raised by height*t."""
        return self.vx + t * (xb - self.vx), self.hy + t * (self.h - self.hy) - t * height

    def scale(self, y: float) -> float:
        return max(0.0, (y - self.hy) / (self.h - self.hy))

    def u(self, a: float, b: float) -> float:
        return self.r.uniform(a, b)

    def colour(self, base, spread: float = 25.0) -> np.ndarray:
        return np.array([min(255.0, max(0.0, b + self.r.gauss(0, spread))) for b in base])

    def grey(self, lo: float, hi: float, tint: float = 8.0) -> np.ndarray:
        v = self.u(lo, hi)
        return np.array([min(255.0, max(0.0, v + self.r.gauss(0, tint))) for _ in range(3)])

    def any_colour(self) -> np.ndarray:
        """Colours shared across classes on purpose: greys, greens, blues, reds, whites."""
        k = self.r.randrange(6)
        return [lambda: self.grey(40, 200), lambda: self.colour((60, 110, 50), 30),
                lambda: self.colour((50, 80, 160), 30), lambda: self.colour((170, 30, 30), 30),
                lambda: self.grey(210, 250, 4), lambda: self.colour([self.u(0, 255) for _ in range(3)], 10)][k]()

    # -- layers -------------------------------------------------------------------------------------

    def sky(self) -> None:
        h, cv = self.h, self.cv
        mode = self.r.randrange(4)
        top, bottom = [((40, 90, 190), (150, 190, 235)), ((120, 125, 135), (190, 190, 195)),
                       ((70, 50, 120), (240, 150, 80)), ((90, 140, 170), (200, 215, 210))][mode]
        top, bottom = self.colour(top, 15), self.colour(bottom, 15)
        ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None] ** self.u(0.6, 1.5)
        cv.img[:] = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
        cv.lbl[:] = SKY

    def facades(self, xb: float) -> None:
        t = self.u(1.4, 2.0)
        while t > 0.07:
            t1 = t * self.u(0.35, 0.7)
            kind = self.r.choices(range(3), weights=[0.65, 0.2, 0.15])[0]
            xa, xz = sorted((self.along(xb, t)[0], self.along(xb, t1)[0]))
            if xz < 0 or xa > self.w:  # entirely outside the frame
                pass
            elif kind == 0:
                self.building(xb, t1, t)
            elif kind == 1:
                self.hedge(xb, t1, t, self.h * self.u(0.4, 1.4))
            else:
                self.fence(xb, t1, t)
            t = t1

    def building(self, xb: float, t1: float, t0: float) -> None:
        h, cv = self.h, self.cv
        height = h * self.u(1.0, 3.5)
        wall = [self.grey(60, 190), self.colour((200, 180, 140), 25), self.colour((150, 70, 50), 25),
                self.colour((180, 190, 200), 20)][self.r.randrange(4)]
        quad = [self.along(xb, t0), self.along(xb, t1), self.along(xb, t1, height), self.along(xb, t0, height)]
        cv.polys([quad], wall, BUILDING)
        if abs(quad[0][0] - quad[1][0]) < 3:  # too narrow for visible windows
            return
        # windows on a grid uniform in depth (1/t), so they shrink toward the vanishing point
        d0, d1 = 1 / t0, 1 / t1
        cols = int(np.clip((d1 - d0) * self.u(1.5, 3.0), 1, 10))
        rows = int(np.clip(height / h * self.u(2.0, 3.5), 1, 10))
        glass = [self.colour((40, 50, 60), 15), self.colour((120, 160, 210), 25), self.colour((220, 200, 120), 20)][
            self.r.randrange(3)]
        fw, fh = self.u(0.35, 0.7), self.u(0.35, 0.65)
        ds = np.linspace(d0, d1, cols + 1)
        gap = (ds[1:] - ds[:-1]) * (1 - fw) / 2
        ta, tb = 1 / (ds[:-1] + gap), 1 / (ds[1:] - gap)  # (cols,)
        r = np.arange(rows)
        va, vb = (r + (1 - fh) / 2) / rows * 0.92 + 0.06, (r + 1 - (1 - fh) / 2) / rows * 0.92 + 0.06
        ta, tb, va, vb = (np.broadcast_to(a, (cols, rows)) for a in (ta[:, None], tb[:, None], va[None], vb[None]))
        corners = [self.along(xb, t, height * v) for t, v in ((ta, va), (tb, va), (tb, vb), (ta, vb))]
        polys = np.stack([np.stack(c, -1) for c in corners], 2).reshape(-1, 4, 2)
        cv.polys(polys, glass, BUILDING)

    def hedge(self, xb: float, t1: float, t0: float, height: float) -> None:
        ts = np.linspace(t0, t1, 12)
        bumps = height * (1 + 0.25 * self.rng.standard_normal(12))
        top = [self.along(xb, t, b) for t, b in zip(ts, bumps)]
        poly = [self.along(xb, t0)] + top + [self.along(xb, t1)]
        self.cv.polys([poly], self.colour((70, 110, 40), 30), VEG)

    def fence(self, xb: float, t1: float, t0: float) -> None:
        self.hedge(xb, t1, t0, self.h * self.u(0.3, 0.6))
        height = self.h * self.u(0.15, 0.3)
        col = [self.grey(90, 200), self.colour((120, 80, 50), 20), self.colour((40, 90, 60), 15)][self.r.randrange(3)]
        n = int(np.clip((1 / t1 - 1 / t0) * self.u(8, 16), 2, 60))
        ds = np.linspace(1 / t0, 1 / t1, n + 1)
        ta, tb = 1 / ds[:-1], 1 / (ds[:-1] + (ds[1:] - ds[:-1]) * 0.5)
        corners = [self.along(xb, t, hh) for t, hh in ((ta, 0), (tb, 0), (tb, height), (ta, height))]
        slats = np.stack([np.stack(c, -1) for c in corners], 1)
        rail = [self.along(xb, t0, height * 0.8), self.along(xb, t1, height * 0.8),
                self.along(xb, t1, height * 0.95), self.along(xb, t0, height * 0.95)]
        self.cv.polys(np.concatenate([slats, np.array([rail])]), col, FENCE)

    def ground(self) -> None:
        h, cv = self.h, self.cv
        vp = (self.vx, self.hy)
        walk = [self.grey(110, 200), self.colour((170, 90, 80), 20),
                self.colour((190, 180, 150), 20)][self.r.randrange(3)]
        cv.polys([[vp, (self.sl, h), (self.rl, h)], [vp, (self.rr, h), (self.sr, h)]], walk, SIDEWALK)
        # tile joints: depth bands (geometric in y) and lines toward the vanishing point
        joint = walk * 0.7
        ts = (np.arange(1, 14) / 14) ** 2
        bands = []
        for xb_out, xb_in in ((self.sl, self.rl), (self.sr, self.rr)):
            (xo, yo), (xi, yi), th = self.along(xb_out, ts), self.along(xb_in, ts), np.maximum(0.5, ts * 1.2)
            bands.append(np.stack([np.stack([xo, yo - th / 2], -1), np.stack([xi, yi - th / 2], -1),
                                   np.stack([xi, yi + th / 2], -1), np.stack([xo, yo + th / 2], -1)], 1))
        cv.polys(np.concatenate(bands), joint, None)
        road = self.grey(50, 150)
        cv.polys([[vp, (self.rl, h), (self.rr, h)]], road, ROAD)
        curb = self.grey(170, 230)
        for xb in (self.rl, self.rr):
            cv.line(vp, (xb, h), curb, SIDEWALK, max(1.0, self.w * 0.012))
        mark = [self.grey(225, 250, 3), self.colour((230, 200, 60), 10)][self.r.randrange(2)]
        lane_x = self.vx + (self.rl + self.rr - 2 * self.vx) / 2 * self.u(0.8, 1.2)
        n = int(self.u(5, 10))
        for k in range(n):
            ta, tb = ((k + 0.2) / n) ** 1.6, ((k + 0.6) / n) ** 1.6
            wa, wb = max(0.6, ta * self.w * 0.02), max(0.6, tb * self.w * 0.02)
            pa, pb = self.along(lane_x, ta), self.along(lane_x, tb)
            cv.polys([[(pa[0] - wa, pa[1]), (pa[0] + wa, pa[1]), (pb[0] + wb, pb[1]), (pb[0] - wb, pb[1])]], mark, ROAD)
        if self.r.random() < 0.35:  # zebra crossing
            t0 = self.u(0.45, 0.8)
            ya, yb = self.along(0, t0)[1], self.along(0, t0 * 1.12)[1]
            xs = np.linspace(self.along(self.rl, t0)[0], self.along(self.rr, t0)[0], 12)
            polys = [[(xs[k], ya), (xs[k + 1], ya), (xs[k + 1], yb), (xs[k], yb)] for k in range(0, 11, 2)]
            cv.polys(polys, self.grey(215, 245, 3), ROAD)

    # -- objects ------------------------------------------------------------------------------------

    def car(self, x: float, yb: float) -> None:
        s, cv = self.scale(yb), self.cv
        cw = s * (self.rr - self.rl) * self.u(0.25, 0.38)
        ch = cw * self.u(0.6, 0.85)
        cv.polys([_ellipse(x, yb, cw * 0.6, ch * 0.08)], (25, 25, 25), None)  # shadow, stays road
        body = self.any_colour()
        x0, x1 = x - cw / 2, x + cw / 2
        cv.rect(x0 + cw * 0.06, yb - ch * 0.18, x0 + cw * 0.24, yb, (20, 20, 20), CAR)  # wheels
        cv.rect(x1 - cw * 0.24, yb - ch * 0.18, x1 - cw * 0.06, yb, (20, 20, 20), CAR)
        cv.rect(x0, yb - ch * 0.6, x1, yb - ch * 0.12, body, CAR)
        cv.polys([[(x0 + cw * 0.03, yb - ch * 0.55), (x1 - cw * 0.03, yb - ch * 0.55),
                   (x1 - cw * 0.15, yb - ch), (x0 + cw * 0.15, yb - ch)]], body * 0.9, CAR)
        glass = [self.colour((40, 45, 55), 10), self.colour((120, 160, 200), 20)][self.r.randrange(2)]
        cv.polys([[(x0 + cw * 0.1, yb - ch * 0.58), (x1 - cw * 0.1, yb - ch * 0.58),
                   (x1 - cw * 0.19, yb - ch * 0.93), (x0 + cw * 0.19, yb - ch * 0.93)]], glass, CAR)
        lamp = (200, 30, 30) if self.r.random() < 0.7 else (240, 220, 180)
        cv.rect(x0 + cw * 0.04, yb - ch * 0.5, x0 + cw * 0.16, yb - ch * 0.4, lamp, CAR)
        cv.rect(x1 - cw * 0.16, yb - ch * 0.5, x1 - cw * 0.04, yb - ch * 0.4, lamp, CAR)
        cv.rect(x - cw * 0.1, yb - ch * 0.35, x + cw * 0.1, yb - ch * 0.25, self.grey(200, 245, 3), CAR)

    def person(self, x: float, yb: float) -> None:
        s, cv = self.scale(yb), self.cv
        ph = s * self.h * self.u(0.45, 0.7)
        bw = ph * self.u(0.2, 0.28)
        legs, shirt = self.any_colour(), self.any_colour()
        stride = ph * self.u(-0.08, 0.08)
        cv.line((x - bw * 0.2, yb - ph * 0.48), (x - bw * 0.2 - stride, yb), legs, PERSON, bw * 0.32)
        cv.line((x + bw * 0.2, yb - ph * 0.48), (x + bw * 0.2 + stride, yb), legs, PERSON, bw * 0.32)
        cv.polys([[(x - bw / 2, yb - ph * 0.45), (x + bw / 2, yb - ph * 0.45), (x + bw * 0.45, yb - ph * 0.82),
                   (x - bw * 0.45, yb - ph * 0.82)]], shirt, PERSON)
        for side in (-1, 1):
            cv.line((x + side * bw * 0.5, yb - ph * 0.8), (x + side * bw * self.u(0.55, 0.9), yb - ph * 0.5),
                    shirt * 0.85, PERSON, bw * 0.2)
        skin = self.colour([(230, 190, 160), (190, 140, 100), (120, 80, 55)][self.r.randrange(3)], 12)
        cv.circle(x, yb - ph * 0.9, ph * 0.085, skin, PERSON)
        if self.r.random() < 0.7:
            cv.circle(x, yb - ph * 0.93, ph * 0.07, self.grey(15, 90, 10), PERSON)

    def pole(self, x: float, yb: float) -> None:
        s, cv = self.scale(yb), self.cv
        ph = s * self.h * self.u(0.9, 1.6)
        pw = max(0.8, s * self.w * self.u(0.008, 0.018))
        col = [self.grey(60, 170), self.colour((40, 70, 50), 10), self.grey(20, 50)][self.r.randrange(3)]
        cv.rect(x - pw / 2, yb - ph, x + pw / 2, yb, col, POLE)
        if self.r.random() < 0.3:  # street lamp arm
            dx = (self.vx - x) * 0.15
            cv.line((x, yb - ph), (x + dx, yb - ph * 1.04), col, POLE, pw * 0.7)
            cv.rect(x + dx - pw, yb - ph * 1.05, x + dx + pw, yb - ph * 1.0, self.grey(200, 250, 3), POLE)
        if self.r.random() < 0.75:
            self.sign(x, yb - ph * self.u(0.7, 0.95), s * self.h * self.u(0.06, 0.12))

    def sign(self, x: float, y: float, r: float) -> None:
        cv = self.cv
        outer, inner = [((200, 30, 30), (240, 240, 240)), ((30, 70, 170), (240, 240, 240)),
                        ((230, 200, 40), (30, 30, 30)), ((30, 120, 60), (240, 240, 240)),
                        ((240, 240, 240), (30, 30, 30))][self.r.randrange(5)]
        outer, inner = self.colour(outer, 12), self.colour(inner, 8)
        shape = self.r.randrange(4)
        if shape == 0:
            cv.circle(x, y, r, outer, SIGN)
            cv.circle(x, y, r * 0.65, inner, SIGN)
        elif shape == 1:
            cv.polys([[(x - r, y + r * 0.8), (x + r, y + r * 0.8), (x, y - r)]], outer, SIGN)
            cv.polys([[(x - r * 0.5, y + r * 0.5), (x + r * 0.5, y + r * 0.5), (x, y - r * 0.4)]], inner, SIGN)
        elif shape == 2:
            cv.rect(x - r * 1.3, y - r * 0.8, x + r * 1.3, y + r * 0.8, outer, SIGN)
            cv.rect(x - r * 0.9, y - r * 0.15, x + r * 0.9, y + r * 0.15, inner, SIGN)
        else:  # traffic light
            cv.rect(x - r * 0.45, y - r * 1.2, x + r * 0.45, y + r * 1.2, (30, 30, 30), SIGN)
            on = self.r.randrange(3)
            for k, c in enumerate(((220, 40, 40), (230, 180, 40), (40, 200, 90))):
                cv.circle(x, y + (k - 1) * r * 0.75, r * 0.28, c if k == on else np.array(c) * 0.3, SIGN)

    def tree(self, x: float, yb: float) -> None:
        s, cv = self.scale(yb), self.cv
        th = s * self.h * self.u(0.6, 1.2)
        cv.rect(x - s * self.w * 0.008, yb - th * 0.6, x + s * self.w * 0.008, yb, self.colour((90, 65, 45), 15), VEG)
        leaf = self.colour([(60, 110, 40), (100, 130, 40), (160, 120, 40)]
                           [self.r.choices(range(3), weights=[0.6, 0.25, 0.15])[0]], 20)
        for _ in range(int(self.u(3, 7))):
            cv.circle(x + th * self.u(-0.25, 0.25), yb - th * self.u(0.6, 0.95), th * self.u(0.15, 0.3),
                      leaf * self.u(0.85, 1.1), VEG)

    def objects(self) -> None:
        rng, h = self.r, self.h
        items: list[tuple[float, Any, float]] = []
        for _ in range(rng.randrange(1, 5)):  # cars on the road
            s = self.u(0.15, 1.05)
            x = self.along(self.rl, s)[0], self.along(self.rr, s)[0]
            items.append((self.along(0, s)[1], self.car,
                          self.u(x[0] + 0.15 * (x[1] - x[0]), x[1] - 0.15 * (x[1] - x[0]))))
        for kind, count in ((self.person, rng.randrange(0, 5)), (self.pole, rng.randrange(1, 4)),
                            (self.tree, rng.randrange(0, 3))):
            for _ in range(count):
                s = self.u(0.2, 1.0)
                left = rng.random() < 0.5
                out, inn = (self.sl, self.rl) if left else (self.sr, self.rr)
                xo, xi = self.along(out, s)[0], self.along(inn, s)[0]
                frac = self.u(0.05, 0.3) if kind != self.person else self.u(0.1, 0.9)
                if kind == self.person and rng.random() < 0.15:  # someone crossing the road
                    xi, xo = self.along(self.rl, s)[0], self.along(self.rr, s)[0]
                items.append((self.along(0, s)[1], kind, xi + (xo - xi) * frac))
        for yb, draw, x in sorted(items, key=lambda it: it[0]):  # far to near: painter's occlusion
            if yb < h * 1.1:
                draw(x, yb)

    # -- appearance ---------------------------------------------------------------------------------

    def finish(self) -> np.ndarray:
        """Texture, clouds, cast shadow, lighting gradient, colour temperature and sensor noise."""
        h, w, rng = self.h, self.w, self.rng
        img = self.cv.img.astype(np.float32)
        lbl = self.cv.lbl
        # per-class texture amplitude of fine grain, mid-scale leaf/stain and low-frequency patches
        a_fine, a_mid, a_low = (np.take(t, lbl) for t in _TEXTURE)
        mod = 1.0 + a_fine * rng.standard_normal((h, w), dtype=np.float32)
        mod += a_mid * _noise(rng, h, w, max(2, w // 48))
        mod += a_low * _noise(rng, h, w, max(4, w // 8))
        sky = lbl == SKY
        cloud = np.clip(_noise(rng, h, w, max(4, w // 6)) * self.u(0.5, 1.5) - 0.2, 0, 1) * sky
        img += (235 - img) * cloud[..., None]
        if self.r.random() < 0.5:  # shadow cast by one side's facades across the ground
            xb = self.sl if self.r.random() < 0.5 else self.sr
            xr = self.vx + (self.rr - self.vx if xb == self.sl else self.rl - self.vx) * self.u(0.0, 0.9)
            m = np.zeros((h, w), np.uint8)
            pts = np.array([[self.vx, self.hy], [xb, h], [xr, h]]) * _F
            cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
            mod[(m > 0) & ~sky] *= self.u(0.45, 0.75)
        xs = (np.arange(w, dtype=np.float32) / w - 0.5) * self.u(-1, 1)
        ys = (np.arange(h, dtype=np.float32) / h - 0.5) * self.u(-1, 1)
        mod *= (1 + self.u(0, 0.4) * (xs[None, :] + ys[:, None])) * self.u(0.6, 1.3)
        warm = self.u(-0.12, 0.12)
        img *= mod[..., None] * np.array([1 + warm, 1.0, 1 - warm], np.float32)
        img += rng.standard_normal(img.shape, dtype=np.float32) * self.u(1.0, 5.0)
        return np.clip(img, 0, 255).astype(np.uint8)


_TEXTURE = np.zeros((3, 256), np.float32)
_TEXTURE[:, :10] = np.array([[0.06, 0.05, 0.08], [0.03, 0.03, 0.06], [0.03, 0.04, 0.08], [0.0, 0.0, 0.0],
                             [0.12, 0.35, 0.12], [0.02, 0.0, 0.03], [0.03, 0.05, 0.0], [0.02, 0.0, 0.04],
                             [0.02, 0.0, 0.0], [0.03, 0.02, 0.05]], np.float32).T


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def render_scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene: (RGB uint8 HxWx3, class mask uint8 HxW with values 0..9)."""
    sc = _Scene(height, width, rng)
    sc.sky()
    sc.facades(sc.sl)
    sc.facades(sc.sr)
    sc.ground()
    sc.objects()
    return sc.finish(), sc.cv.lbl.copy()


@register("synthetic")
class Synthetic(SegDataset):
    """The generated street scenes; ``root`` is unused. Options: num_train, num_val, size [H, W], seed."""

    OPTIONS: dict = {"num_train": 400, "num_val": 100, "size": [128, 256], "seed": 0}

    def __init__(self, root=None, split="train", options=None) -> None:
        super().__init__(None, split, options)
        opt = self.options
        if split not in SPLIT_IDS:
            raise ApdError(f"synthetic: unknown split '{split}'; available: {', '.join(SPLIT_IDS)}")
        size = opt["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, int) and v >= 64 for v in size)):
            raise ApdError(f"data.options.size: expected [H, W] integers >= 64, got {size!r}")
        for key in ("num_train", "num_val", "seed"):
            if not isinstance(opt[key], int) or opt[key] < 0:
                raise ApdError(f"data.options.{key}: expected a non-negative integer, got {opt[key]!r}")
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(opt["seed"])
        self.set_classes(SYNTH_CLASSES, SYNTH_PALETTE)
        n = opt["num_train"] if split == "train" else opt["num_val"]
        if n == 0:
            raise ApdError(f"synthetic: split '{split}' is empty "
                           f"(data.options.num_{'train' if split == 'train' else 'val'} is 0)")
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self._n <= i < self._n:
            raise IndexError(i)
        i %= self._n
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], i])
        return render_scene(self.size[0], self.size[1], rng)

    def paths(self, i: int) -> tuple[str, None]:
        return f"synthetic://{self.split}/{i:06d}", None


def write_synthetic(out: str | Path, num_train: int = 400, num_val: int = 100, size: tuple[int, int] = (128, 256),
                    seed: int = 0, progress: bool = True) -> Path:
    """Write the synthetic dataset as a ``folder`` dataset: images/<split>/, masks/<split>/, classes.yaml."""
    import yaml
    from tqdm import tqdm

    out = Path(out)
    opts = {"num_train": num_train, "num_val": num_val, "size": list(size), "seed": seed}
    splits = [(s, Synthetic(None, s, opts)) for s, n in (("train", num_train), ("val", num_val)) if n > 0]
    if not splits:
        raise ApdError("data synth: nothing to write (num-train and num-val are both 0)")
    for split, _ in splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
    (out / "classes.yaml").write_text(yaml.safe_dump(
        {"names": SYNTH_CLASSES, "palette": SYNTH_PALETTE,
         "source": f"apd-edge synthetic street scenes, seed {seed}, size {size[0]}x{size[1]}"}, sort_keys=False))
    total = sum(len(ds) for _, ds in splits)
    with tqdm(total=total, desc=f"writing {out}", unit="img", disable=not progress) as bar:
        for split, ds in splits:
            for i in range(len(ds)):
                img, mask = ds[i]
                cv2.imwrite(str(out / "images" / split / f"{i:06d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                cv2.imwrite(str(out / "masks" / split / f"{i:06d}.png"), mask)
                bar.update()
    return out
