"""Sparse weight formats (CSR, BSR, COO) as plain numpy arrays.

These are the build-time side of the sparse kernels: a pruned weight matrix is turned into
data/indices/indptr arrays that the kernels take as runtime arguments. The pruning work and the
reports use `SparseWeight` for nnz/density/bytes figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMATS = ("csr", "bsr", "coo")


@dataclass(frozen=True)
class SparseWeight:
    """A 2-D weight in block-CSR form; CSR is the (1, 1) block case.

    data: (nnz_blocks, block_rows, block_cols), indices: (nnz_blocks,) block-column index,
    indptr: (n_block_rows + 1,). `shape` is the logical (unpadded) matrix shape; the matrix is
    zero-padded up to whole blocks.
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]
    block: tuple[int, int] = (1, 1)

    @property
    def padded_shape(self) -> tuple[int, int]:
        br, bc = self.block
        return (_ceil_div(self.shape[0], br) * br, _ceil_div(self.shape[1], bc) * bc)

    @property
    def nnz(self) -> int:
        """Stored values, explicit zeros inside blocks included."""
        return int(self.data.size)

    @property
    def nnz_blocks(self) -> int:
        return int(self.indices.size)

    @property
    def true_nnz(self) -> int:
        return int(np.count_nonzero(self.data))

    @property
    def density(self) -> float:
        """Fraction of the logical matrix that is stored (block fill-in counts)."""
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @property
    def bytes(self) -> int:
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)

    @property
    def dense_bytes(self) -> int:
        return int(self.shape[0] * self.shape[1] * self.data.dtype.itemsize)

    def to_dense(self) -> np.ndarray:
        br, bc = self.block
        pr, pc = self.padded_shape
        out = np.zeros((pr // br, br, pc // bc, bc), dtype=self.data.dtype)
        rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        out[rows, :, self.indices, :] = self.data
        return out.reshape(pr, pc)[: self.shape[0], : self.shape[1]]

    def summary(self) -> dict[str, float | int | str]:
        fmt = "csr" if self.block == (1, 1) else f"bsr{self.block[0]}x{self.block[1]}"
        return {
            "format": fmt,
            "shape": f"{self.shape[0]}x{self.shape[1]}",
            "nnz": self.nnz,
            "density": round(self.density, 4),
            "bytes": self.bytes,
            "dense_bytes": self.dense_bytes,
        }


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def to_bsr(w2d: np.ndarray, block: tuple[int, int]) -> SparseWeight:
    """Block-CSR of a dense 2-D matrix; a block is stored when any of its entries is nonzero."""
    if w2d.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {w2d.shape}")
    br, bc = int(block[0]), int(block[1])
    if br < 1 or bc < 1:
        raise ValueError(f"bad block {block}")
    rows, cols = w2d.shape
    pr, pc = _ceil_div(rows, br) * br, _ceil_div(cols, bc) * bc
    padded = np.zeros((pr, pc), dtype=w2d.dtype)
    padded[:rows, :cols] = w2d
    blocks = padded.reshape(pr // br, br, pc // bc, bc).transpose(0, 2, 1, 3)
    keep = np.any(blocks != 0, axis=(2, 3))  # (n_block_rows, n_block_cols)
    brow, bcol = np.nonzero(keep)  # row-major order: sorted by row, then column
    indptr = np.zeros(pr // br + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return SparseWeight(
        data=np.ascontiguousarray(blocks[brow, bcol]),
        indices=bcol.astype(np.int32),
        indptr=indptr,
        shape=(rows, cols),
        block=(br, bc),
    )


def to_csr(w2d: np.ndarray) -> SparseWeight:
    """CSR of a dense 2-D matrix (stored as the (1, 1) block case)."""
    return to_bsr(w2d, (1, 1))


def to_coo(w2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, vals) of the nonzeros, row-major order."""
    r, c = np.nonzero(w2d)
    return r.astype(np.int32), c.astype(np.int32), w2d[r, c]


def coo_to_csr(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
) -> SparseWeight:
    """COO triplets (any order, duplicates summed) to CSR."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    vals = np.asarray(vals)
    if not (rows.shape == cols.shape == vals.shape) or rows.ndim != 1:
        raise ValueError("rows, cols and vals must be 1-D arrays of one length")
    if rows.size and (rows.min() < 0 or rows.max() >= shape[0] or cols.min() < 0 or cols.max() >= shape[1]):
        raise ValueError(f"COO index out of range for shape {shape}")
    flat = rows * shape[1] + cols
    uniq, inverse = np.unique(flat, return_inverse=True)
    summed = np.zeros(uniq.size, dtype=vals.dtype)
    np.add.at(summed, inverse, vals)
    urow, ucol = uniq // shape[1], uniq % shape[1]
    indptr = np.zeros(shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(urow, minlength=shape[0]), out=indptr[1:])
    return SparseWeight(
        data=summed.reshape(-1, 1, 1),
        indices=ucol.astype(np.int32),
        indptr=indptr,
        shape=(int(shape[0]), int(shape[1])),
        block=(1, 1),
    )


def convert(w2d: np.ndarray, fmt: str, block: tuple[int, int] = (1, 8)) -> SparseWeight:
    """Dense matrix to the kernel form of `fmt` (COO goes through CSR, as at build time)."""
    if fmt == "csr":
        return to_csr(w2d)
    if fmt == "bsr":
        return to_bsr(w2d, block)
    if fmt == "coo":
        return coo_to_csr(*to_coo(w2d), w2d.shape)
    raise ValueError(f"unknown sparse format {fmt!r}; supported: {', '.join(FORMATS)}")


def prune_random(w: np.ndarray, sparsity: float, seed: int = 0) -> np.ndarray:
    """Zero a random `sparsity` fraction of the entries (unstructured), for speed studies."""
    rng = np.random.default_rng(seed)
    mask = rng.random(w.shape) >= sparsity
    return np.where(mask, w, np.zeros_like(w))


def prune_blocks(w2d: np.ndarray, sparsity: float, block: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Zero a random `sparsity` fraction of whole (block) tiles, the pattern BSR likes."""
    rng = np.random.default_rng(seed)
    br, bc = block
    rows, cols = w2d.shape
    keep = rng.random((_ceil_div(rows, br), _ceil_div(cols, bc))) >= sparsity
    mask = np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:rows, :cols]
    return np.where(mask, w2d, np.zeros_like(w2d))
