"""Shared pieces of the convolution kernels: geometry, block-size choice, padding."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, tirx

ANCHOR_PREFIX = "dlas_"
"""Block names of project kernels start with this; the scheduler finds a fused function's anchor by it."""


@dataclass(frozen=True)
class ConvGeom:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int

    @property
    def oh(self) -> int:
        return (self.h + self.pad[0] + self.pad[2] - (self.kh - 1) * self.dilation[0] - 1) // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pad[1] + self.pad[3] - (self.kw - 1) * self.dilation[1] - 1) // self.stride[1] + 1

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.c == self.o


def pick_block(extent: int, limit: int) -> int:
    """Largest divisor of ``extent`` not above ``limit`` (exact tiles: no predicated tails to vectorize)."""
    for b in range(min(extent, limit), 0, -1):
        if extent % b == 0:
            return b
    return 1


def channel_block(extent: int, lanes: int) -> int:
    """Channel block for vector lanes: the full SIMD width when it divides, else a smaller divisor."""
    return pick_block(extent, lanes)


def acc_cast(x, dtype: str):
    return x if x.dtype == dtype else x.astype(dtype)


def pad_nchw(data: te.Tensor, g: ConvGeom, name: str = "dlas_pad_nchw", value=None) -> te.Tensor:
    """Zero-pad H and W of an NCHW tensor; returns ``data`` itself when there is no padding."""
    pt, pl, pb, pr = g.pad
    if not any(g.pad):
        return data
    zero = tirx.const(0, data.dtype) if value is None else value

    def f(n, c, y, x):
        inside = tirx.all(y >= pt, y < g.h + pt, x >= pl, x < g.w + pl)
        return tirx.if_then_else(inside, data[n, c, y - pt, x - pl], zero)

    return te.compute((g.n, g.c, g.h + pt + pb, g.w + pl + pr), f, name=name)


def pad_nhwc(data: te.Tensor, g: ConvGeom, name: str = "dlas_pad_nhwc") -> te.Tensor:
    pt, pl, pb, pr = g.pad
    if not any(g.pad):
        return data
    zero = tirx.const(0, data.dtype)

    def f(n, y, x, c):
        inside = tirx.all(y >= pt, y < g.h + pt, x >= pl, x < g.w + pl)
        return tirx.if_then_else(inside, data[n, y - pt, x - pl, c], zero)

    return te.compute((g.n, g.h + pt + pb, g.w + pl + pr, g.c), f, name=name)
