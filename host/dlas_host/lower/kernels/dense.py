"""Dense / linear layer (relax.matmul with a constant [K, N] weight, as torch's linear imports).

Weights are packed ``[N/nb, K, nb]`` so each k step loads one contiguous vector of ``nb`` outputs;
rows of the input are broadcast. Batch-1 inference makes this a weight-streaming GEMV.
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .. import schedule_cpu as sc
from ..common import acc_cast, pick_block
from ..registry import Kernel, KernelRequest, register
from ..targets import TargetInfo


def block_for(n_out: int, info: TargetInfo, out_dtype: str) -> int:
    return pick_block(n_out, info.lanes(out_dtype))


def pack_weight(w_kn: np.ndarray, nb: int) -> np.ndarray:
    k, n = w_kn.shape
    return np.ascontiguousarray(w_kn.reshape(k, n // nb, nb).transpose(1, 0, 2))


def dense(x: te.Tensor, wp: te.Tensor, n_out: int, out_dtype: str, info: TargetInfo) -> te.Tensor:
    k_total, nb = int(wp.shape[1]), int(wp.shape[2])
    rk = te.reduce_axis((0, k_total), "rk")
    lead = [int(s) for s in x.shape[:-1]]

    def f(*idx):
        *m, j = idx
        return te.sum(acc_cast(x[(*m, rk)], out_dtype) * acc_cast(wp[j // nb, rk, j % nb], out_dtype), axis=[rk])

    return te.compute((*lead, n_out), f, name="dlas_dense", attrs={"dlas_sched": "dense", "dlas_nb": nb})


def schedule_dense(sch: sc.Sched, anchor, info: TargetInfo) -> None:
    lanes = info.lanes("float32")
    nb = sc.ann_int(sch, anchor, "dlas_nb")
    *lead, j, rk = sch.get_loops(anchor)
    jo, ji = sch.split(j, [None, nb])
    sch.reorder(*lead, jo, rk, ji)
    fused = sc.fuse_epilogue(sch, anchor, jo, None, lanes)
    sc.schedule_producers(sch, anchor, lanes)
    outer = sch.fuse(*lead, jo) if lead else jo
    sch.parallel(outer)
    sch.vectorize(ji)
    init = sch.decompose_reduction(anchor, rk)
    sc.vectorize_init(sch, init)
    if not fused:
        sc.schedule_tail_generic(sch, anchor, lanes)


def _emit(req: KernelRequest):
    n_out = req.weight.shape[1]
    wp = req.const(pack_weight(req.weight, block_for(n_out, req.info, req.out_dtype)))
    return req.call(dense, req.data, wp, n_out, req.out_dtype, req.info, hint="dlas_dense")


register(Kernel("dense", "gemm", ("dense",), "", "NC", _emit, schedule_dense))
