"""TVMScript PrimFuncs for block-sparse (BSR, CSR = 1x1 blocks) convolution and dense layers.

The sparse arrays are runtime arguments (data/indices/indptr), so the loop over a row's nonzeros
is a data-dependent `T.serial(indptr[i], indptr[i + 1])`; only zeros that fall inside stored
blocks are multiplied. CPU schedule of the conv: one parallel loop over (image, output tile, row
block), so consecutive tasks read the same input window from cache; an accumulator tile in a small
local buffer (kept under the 1 KiB stack limit so it is not heap-allocated per iteration), the
innermost loop vectorised over contiguous output positions, and one input-window offset load per
nonzero (block columns are resolved to offsets at build time). The dense layer walks each row
block in chunks of blocks with independent partial sums (see make_dense_kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

ACC_ELEMS = 224
VEC = 16
"""Accumulator tile size in elements: under 1 KiB of fp32/int32: LowerTVMBuiltin heap-allocates
"local"-scope buffers and >= 1 KiB buffers inside parallel loops, so the tile is "global" scope and small."""


def acc_dtype(in_dtype: str, out_dtype: str) -> str:
    """int8 x int8 accumulates in int32; every float type accumulates in float32."""
    if in_dtype.startswith(("int", "uint")):
        return "int32"
    return "float32"


def _largest_divisor_at_most(n: int, limit: int) -> int:
    limit = max(1, limit)
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class ConvGeometry:
    """Static shapes of the sparse convolution over a phase-split padded input.

    The input is padded and split by stride phase into planes (c, ph, pw) of hq x wq, with
    plane[i, j] = padded[i * sh + ph, j * sw + pw], so every kernel tap reads a stride-1 window.
    The kernel works on "flat" output positions q = oh * wq + ow, so the input of weight column
    (kh, kw, c) for a run of q is one contiguous vector at col_off[column] + q. Positions with
    ow >= OW are computed and dropped; hq covers the reads of the last, partly used tile.
    """

    n: int
    planes: int  # input channels (all groups) x sh x sw
    hq: int  # plane height (tail-extended) / width
    wq: int
    o: int  # output channels (logical, before padding to row blocks)
    oh: int
    ow: int
    groups: int
    out_layout: str  # "NCHW" or "NHWC"
    tile: int  # flat output positions per accumulator row, a multiple of 16 when possible

    @property
    def n_tiles(self) -> int:
        return -(-self.oh * self.wq // self.tile)


def flat_tile(oh: int, ow: int, wq: int, block_rows: int) -> int:
    """Accumulator row length: whole 16-lane vectors, at most ACC_ELEMS elements over all rows."""
    q = oh * wq
    limit = max(1, ACC_ELEMS // block_rows)
    if limit >= 16:
        limit -= limit % 16
    return min(limit, -(-q // 16) * 16) if q > 16 else q


def tile_write_back(geo: ConvGeometry, rows: int, out_dtype: str):
    """Macro storing an accumulator tile `res` (rows, tile) of flat positions q0.. to the output.

    A flat tile spans a few output rows; each row's valid part is one contiguous run of q, so
    the store is a short loop per (row, channel) with no per-element division or bounds test.
    """
    wq, oh, ow, o, tl = geo.wq, geo.oh, geo.ow, geo.o, geo.tile
    nhwc = geo.out_layout == "NHWC"
    max_rows = -(-tl // wq) + 1

    @T.macro
    def write_back(out, res, b, o0, q0):
        for rr in T.serial(max_rows):
            row = T.meta_var(q0 // wq + rr)
            if row < oh:
                for r in T.serial(rows):
                    if o0 + r < o:
                        for q in T.serial(T.max(row * wq, q0), T.min(row * wq + ow, q0 + tl)):
                            if nhwc:
                                out[b, row, q - row * wq, o0 + r] = T.cast(res[r, q - q0], out_dtype)
                            else:
                                out[b, o0 + r, row, q - row * wq] = T.cast(res[r, q - q0], out_dtype)

    return write_back


def make_conv_kernel(
    geo: ConvGeometry,
    block: tuple[int, int],
    n_blocks: int,
    in_dtype: str,
    w_dtype: str,
    out_dtype: str,
) -> tvm.tirx.PrimFunc:
    """Sparse conv over a phase-split padded input (see ConvGeometry).

    Arguments: xp (N, planes, hq, wq); wdata (n_blocks, RB, CB); offs (n_blocks, CB) the offset
    in one group's planes of the input window of each stored column (the block column indices
    resolved at build time, so the inner loop does one index load, not two dependent ones);
    indptr (n_row_blocks + 1,); out (N, O, OH, OW) or (N, OH, OW, O).
    """
    rb, cb = block
    n, c, hp, wq = geo.n, geo.planes, geo.hq, geo.wq
    o, oh, ow = geo.o, geo.oh, geo.ow
    og = o // geo.groups
    grp = (c // geo.groups) * hp * wq
    img = c * hp * wq
    nb = -(-o // rb)
    tl, nt = geo.tile, geo.n_tiles
    # 16-lane pieces: LLVM handles a loop-carried <224 x float> badly but 14 <16 x float> well.
    vl = VEC if tl % VEC == 0 else tl
    nv = tl // vl
    adt = acc_dtype(in_dtype, out_dtype)
    out_shape = (n, oh, ow, o) if geo.out_layout == "NHWC" else (n, o, oh, ow)
    write_back = tile_write_back(geo, rb, out_dtype)

    @T.prim_func(private=True)
    def kernel(
        xp: T.Buffer((n, c, hp, wq), in_dtype),
        wdata: T.Buffer((n_blocks, rb, cb), w_dtype),
        offs: T.Buffer((n_blocks, cb), "int32"),
        indptr: T.Buffer((nb + 1,), "int32"),
        out: T.Buffer(out_shape, out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xf = T.decl_buffer((n * img,), in_dtype, data=xp.data)
        for task in T.parallel(n * nb * nt):
            acc = T.alloc_buffer((rb, tl), adt, scope="global")
            # meta_var inlines the expression: a named scalar here would be heap-allocated per task.
            b = T.meta_var(task // (nb * nt))
            ob = T.meta_var(task % nb)
            q0 = T.meta_var(task // nb % nt * tl)
            base = T.meta_var(b * img + (ob * rb // og) * grp + q0)
            # Only whole-row vector accesses touch `acc` so LLVM keeps it in vector registers;
            # the scalar reads of the write-back go to the copy `res`.
            res = T.alloc_buffer((rb, tl), adt, scope="global")
            for r, iv in T.grid(rb, nv):
                for il in T.vectorized(vl):
                    acc[r, iv * vl + il] = T.cast(0, adt)
            for k in T.serial(indptr[ob], indptr[ob + 1]):
                for cc in T.serial(cb):
                    off = T.meta_var(base + offs[k, cc])
                    for r in T.unroll(rb):
                        v = T.meta_var(T.cast(wdata[k, r, cc], adt))
                        for iv in T.unroll(nv):
                            for il in T.vectorized(vl):
                                i = T.meta_var(iv * vl + il)
                                acc[r, i] = acc[r, i] + v * T.cast(xf[off + i], adt)
            for r, iv in T.grid(rb, nv):
                for il in T.vectorized(vl):
                    res[r, iv * vl + il] = acc[r, iv * vl + il]
            write_back(out, res, b, ob * rb, q0)

    return kernel


def dense_partials(block: tuple[int, int]) -> int:  # a power of two from 2 to 16
    """Partial sums over consecutive blocks of a row block: CSR vectorises over 16 nonzeros (a
    gather of x); BSR keeps 2 so consecutive FMAs do not wait on each other's latency (2 measured
    faster than 4 or 8 on the batch-1 FC: rows hold few blocks, so larger chunks mostly run masked)."""
    return VEC if block == (1, 1) else 2


def make_dense_kernel(
    batch: int,
    k: int,
    o: int,
    block: tuple[int, int],
    n_blocks: int,
    in_dtype: str,
    w_dtype: str,
    out_dtype: str,
) -> tvm.tirx.PrimFunc:
    """out[b, o] = sum_k x[b, k] * W[o, k] with W in BSR over (O, K) (CSR = 1x1 blocks).

    Each row block walks its indptr range in chunks of P consecutive blocks with one accumulator
    acc[P, RB, CB] (lanes: the P nonzeros for CSR, else the block's rows or columns); the last
    chunk is masked, so `wdata`/`indices` must carry P trailing dummy blocks. The P partials and
    the block columns are summed once per row block. Tasks are (group of row blocks, batch row).
    """
    rb, cb = block
    nb = -(-o // rb)
    adt = acc_dtype(in_dtype, out_dtype)
    p_n = dense_partials(block)
    width = rb * cb
    n_acc = p_n * width
    group = max(1, 32 // rb)  # row blocks per task: ~32 output rows amortise the task overhead
    n_groups = -(-nb // group)
    pow2 = cb & (cb - 1) == 0  # block columns: halved once (cb >= 8) or twice (cb >= 16), then serially
    c_left = (cb // 4 if cb >= 16 else cb // 2 if cb >= 8 else cb) if pow2 else cb
    clamp = k % cb != 0  # the last block column reaches past K: clamp its reads (zero weights)

    def zero_past(kk, end, v):
        return T.Select(kk < end, v, T.cast(0, adt))

    @T.macro
    def chunk(acc, wf, x, indices, b, k0, end, masked):
        """acc += the P blocks from k0; `masked`: the row's last chunk (blocks from `end` are zero)."""
        if p_n == VEC and width == 1:
            for p in T.vectorized(p_n):
                prod = T.meta_var(T.cast(wf[k0 + p], adt) * T.cast(x[b, indices[k0 + p]], adt))
                acc[p] = acc[p] + (zero_past(k0 + p, end, prod) if masked else prod)
        elif cb == 1:
            for p in T.unroll(p_n):
                xv = T.meta_var(T.cast(x[b, indices[k0 + p]], adt))
                for r in T.vectorized(rb):
                    prod = T.meta_var(T.cast(wf[(k0 + p) * rb + r], adt) * xv)
                    acc[p * rb + r] = acc[p * rb + r] + (zero_past(k0 + p, end, prod) if masked else prod)
        else:
            for p in T.unroll(p_n):
                for r in T.unroll(rb):
                    for c in T.vectorized(cb):
                        col = T.meta_var(T.min(indices[k0 + p] * cb + c, k - 1) if clamp else indices[k0 + p] * cb + c)
                        prod = T.meta_var(T.cast(wf[((k0 + p) * rb + r) * cb + c], adt) * T.cast(x[b, col], adt))
                        i = T.meta_var((p * rb + r) * cb + c)
                        acc[i] = acc[i] + (zero_past(k0 + p, end, prod) if masked else prod)

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((batch, k), in_dtype),
        wdata: T.Buffer((n_blocks, rb, cb), w_dtype),
        indices: T.Buffer((n_blocks,), "int32"),
        indptr: T.Buffer((nb + 1,), "int32"),
        out: T.Buffer((batch, o), out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        wf = T.decl_buffer((n_blocks * width,), w_dtype, data=wdata.data)
        for task in T.parallel(n_groups * batch):
            acc = T.alloc_buffer((n_acc,), adt, scope="global")
            res = T.alloc_buffer((n_acc,), adt, scope="global")
            b = T.meta_var(task % batch)
            for g in T.serial(group):
                ob = T.meta_var(task // batch * group + g)
                if ob < nb:
                    start = T.meta_var(indptr[ob])
                    end = T.meta_var(indptr[ob + 1])
                    for i in T.vectorized(n_acc):
                        acc[i] = T.cast(0, adt)
                    for ch in T.serial((end - start) // p_n):
                        chunk(acc, wf, x, indices, b, start + ch * p_n, end, False)
                    chunk(acc, wf, x, indices, b, start + (end - start) // p_n * p_n, end, True)
                    for i in T.vectorized(n_acc):
                        res[i] = acc[i]
                    # sum the P partials (halving), then each row's CB columns
                    if p_n >= 16:
                        for i in T.vectorized(width * 8):
                            res[i] = res[i] + res[i + width * 8]
                    if p_n >= 8:
                        for i in T.vectorized(width * 4):
                            res[i] = res[i] + res[i + width * 4]
                    if p_n >= 4:
                        for i in T.vectorized(width * 2):
                            res[i] = res[i] + res[i + width * 2]
                    for i in T.vectorized(width):
                        res[i] = res[i] + res[i + width]
                    for r in T.serial(rb):
                        if pow2 and cb >= 16:
                            for c in T.vectorized(cb // 2):
                                res[r * cb + c] = res[r * cb + c] + res[r * cb + c + cb // 2]
                            for c in T.vectorized(cb // 4):
                                res[r * cb + c] = res[r * cb + c] + res[r * cb + c + cb // 4]
                        elif pow2 and cb >= 8:
                            for c in T.vectorized(cb // 2):
                                res[r * cb + c] = res[r * cb + c] + res[r * cb + c + cb // 2]
                        for c in T.serial(1, c_left):
                            res[r * cb] = res[r * cb] + res[r * cb + c]
                        if ob * rb + r < o:
                            out[b, ob * rb + r] = T.cast(res[r * cb], out_dtype)

    return kernel
