"""Conv geometry for the flat-row kernels: padding, stride-phase split and weight column offsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te

from .sparse_kernels import ConvGeometry, flat_tile


def pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = [int(x) for x in v]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def pad4(padding) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, a 2-tuple (h, w) or relax's 4-tuple."""
    if isinstance(padding, int):
        return (padding,) * 4
    p = [int(x) for x in padding]
    if len(p) == 1:
        return (p[0],) * 4
    if len(p) == 2:
        return (p[0], p[1], p[0], p[1])
    return (p[0], p[1], p[2], p[3])


@dataclass(frozen=True)
class ConvPlan:
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]
    geo: ConvGeometry

    def col_offsets(self, groups: int, k_padded: int) -> np.ndarray:
        """Offset in one group's planes of each weight column, columns ordered (kh, kw, ic)."""
        sh, sw = self.stride
        dh, dw = self.dilation
        cg = self.c // groups
        hq, wq = self.geo.hq, self.geo.wq
        cols = np.arange(k_padded)
        ci, tap = cols % cg, cols // cg
        ih, iw = (tap // self.kw) * dh, (tap % self.kw) * dw
        plane = (ci * sh + ih % sh) * sw + iw % sw
        off = plane * hq * wq + (ih // sh) * wq + iw // sw
        off[cols >= cg * self.kh * self.kw] = 0  # zero-weight padding columns read a valid element
        return off.astype(np.int32)


def plan_conv(x_shape, layout: str, o: int, kh: int, kw: int, strides, padding, dilation, groups: int,
              block_rows: int) -> ConvPlan | None:
    if layout == "NCHW":
        n, c, h, w = x_shape
    else:
        n, h, w, c = x_shape
    sh, sw = pair(strides)
    dh, dw = pair(dilation)
    pt, pl, pb, pr = pad4(padding)
    hp, wp = h + pt + pb, w + pl + pr
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        return None
    hq, wq = -(-hp // sh), -(-wp // sw)
    tile = flat_tile(oh, ow, wq, block_rows)
    n_tiles = -(-oh * wq // tile)
    # The last tile reads past the plane's last row: extend the planes with zero rows.
    last_read = ((kh - 1) * dh // sh) * wq + (kw - 1) * dw // sw + n_tiles * tile - 1
    hq = max(hq, -(-(last_read + 1) // wq))
    geo = ConvGeometry(n, c * sh * sw, hq, wq, o, oh, ow, groups, layout, tile)
    return ConvPlan(n, c, h, w, kh, kw, (sh, sw), (dh, dw), (pt, pl, pb, pr), geo)


def emit_phase_pad(bb: relax.BlockBuilder, data: relax.Expr, plan: ConvPlan, layout: str) -> relax.Expr:
    """Pad, move to channel-major and split by stride phase in one TE stage (no bounds checks later)."""
    sh, sw = plan.stride
    pt, pl = plan.pad[0], plan.pad[1]
    h, w = plan.h, plan.w
    g = plan.geo

    def phase_pad(x: te.Tensor) -> te.Tensor:
        def at(b, p, i, j):
            ch, ph, pw = p // (sh * sw), p // sw % sh, p % sw
            ii, jj = i * sh + ph - pt, j * sw + pw - pl
            inside = tvm.tirx.all(ii >= 0, ii < h, jj >= 0, jj < w)
            v = x[b, ch, ii, jj] if layout == "NCHW" else x[b, ii, jj, ch]
            return tvm.tirx.if_then_else(inside, v, tvm.tirx.const(0, x.dtype))

        return te.compute((g.n, g.planes, g.hq, g.wq), at, name="conv_phase_pad")

    return bb.emit(bb.call_te(phase_pad, data, primfunc_name_hint="conv_phase_pad"))
