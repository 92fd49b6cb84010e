"""Accuracy on the device: a fixed, fingerprinted evaluation set, and top-k scoring of what the agent returns.

The evaluation set is the whole test split, or a fixed subset of ``n`` of its images (the same seeded draw
every time, kept in stored order: a split stored class by class, as ImageNet class folders are, still gives
every class its share), preprocessed exactly as for training; its fingerprint (dataset, count, sha256 of the image and label bytes) goes on the
result row, so two rows' accuracies are comparable only when their fingerprints match. The agent runs the
very artifact it timed over these images and returns top-k class indices; scoring happens here.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dlas_agent.protocol import EvalRequest

TOPK = 5


@dataclass
class EvalSet:
    dataset: str
    images: np.ndarray  # (N, 3, H, W) float32, normalised like the training data
    labels: np.ndarray  # (N,) int64
    fingerprint: str

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self, batch: int, max_bytes: int = 64 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """(offset, images) pieces of whole batches, each at most ``max_bytes`` (the last one padded by
        repeating its final image so every call fills the artifact's batch; scoring drops the padding)."""
        per_image = self.images[0].nbytes if len(self) else 1
        step = max(batch, (max_bytes // per_image) // batch * batch)
        for start in range(0, len(self), step):
            part = self.images[start:start + step]
            short = (-len(part)) % batch
            if short:
                part = np.concatenate([part, np.repeat(part[-1:], short, axis=0)])
            yield start, np.ascontiguousarray(part)


def eval_set(dataset: str, n: int, data_dir: Path | None = None, preprocessing: dict | None = None) -> EvalSet:
    """``n`` test images of ``dataset`` (all of them when ``n`` is 0 or not smaller than the split; else a
    fixed seeded draw, in stored order), preprocessed with the model's stored recipe when given (published
    weights differ in resize/interpolation)."""
    import torch  # noqa: PLC0415

    from . import data  # noqa: PLC0415

    split = data.load(dataset, "test", data_dir, augment=False, preprocessing=preprocessing)
    count = len(split) if n <= 0 else min(n, len(split))  # type: ignore[arg-type]
    picked = subset(len(split), count)  # type: ignore[arg-type]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(split, picked), batch_size=256)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.numpy().astype(np.float32))
        ys.append(y.numpy().astype(np.int64))
    images = np.concatenate(xs) if xs else np.zeros((0, 3, 1, 1), np.float32)
    labels = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
    h = hashlib.sha256(f"{dataset}|{count}|{images.shape}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(labels.tobytes())
    return EvalSet(dataset, images, labels, h.hexdigest()[:16])


SUBSET_SEED = 0  # part of what a fingerprint identifies: changing it changes every subset's fingerprint


def subset(total: int, count: int) -> list[int]:
    """Indices of the evaluation subset: all of them, or ``count`` drawn with a fixed seed, sorted."""
    if count >= total:
        return list(range(total))
    return sorted(int(i) for i in np.random.default_rng(SUBSET_SEED).permutation(total)[:count])


def score(topk: np.ndarray, labels: np.ndarray) -> tuple[float, float, int, int]:
    """(top-1, top-5, top-1 hits, top-5 hits) of ``topk`` (N, k) class indices, best first."""
    if len(labels) == 0:
        return 0.0, 0.0, 0, 0
    hits = topk == labels[:, None]
    c1, c5 = int(hits[:, :1].any(1).sum()), int(hits[:, :TOPK].any(1).sum())
    return c1 / len(labels), c5 / len(labels), c1, c5


@dataclass
class DeviceAccuracy:
    top1: float
    top5: float
    images: int
    fingerprint: str
    hits1: int
    hits5: int
    compute_s: float  # the agent's time inside the model calls
    transfer_s: float  # the agent's host<->device copies of inputs and logits
    wall_s: float  # end to end on the host: uploads, calls, downloads
    topk: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, TOPK), np.int32))

    def record(self) -> dict[str, Any]:
        return {"images": self.images, "fingerprint": self.fingerprint, "hits1": self.hits1, "hits5": self.hits5,
                "compute_s": round(self.compute_s, 6), "transfer_s": round(self.transfer_s, 6),
                "wall_s": round(self.wall_s, 6)}


class EvaluationError(RuntimeError):
    pass


def evaluate_on_device(client: Any, library: Path, sha256: str, evals: EvalSet, batch: int, *,
                       num_threads: int = 0, timeout_s: float | None = None) -> DeviceAccuracy:
    """Run the artifact (already the one timed) over ``evals`` on the agent, chunk by chunk; score here."""
    # Its own name: the benchmark's copy is loaded (mapped) in this session, and writing over a mapped
    # library crashes the session.
    lib_name = f"eval-{sha256[:16]}.so"
    client.upload(library, lib_name)
    picks: list[np.ndarray] = []
    compute_s = transfer_s = 0.0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (start, part) in enumerate(evals.chunks(batch)):
            local = Path(tmp) / "chunk.npy"
            np.save(local, part)
            name = f"eval{i}.npy"
            client.upload(local, name)
            request = EvalRequest(artifact=lib_name, sha256=sha256, images=name, outputs=f"topk{i}.npy",
                                  batch=batch, k=TOPK, device=client.device.runtime_device,
                                  num_threads=num_threads, artifact_mac=client.artifact_mac(sha256))
            reply = client.evaluate(request, timeout_s)
            if not reply.ok:
                raise EvaluationError(f"{client.device.name}: evaluation failed: {reply.error}")
            back = Path(tmp) / "topk.npy"
            back.write_bytes(client.download(reply.outputs))
            topk = np.load(back, allow_pickle=False)
            picks.append(topk[:min(len(part), len(evals) - start)])
            compute_s += reply.compute_s
            transfer_s += reply.transfer_s
    wall_s = time.perf_counter() - t0
    topk = np.concatenate(picks) if picks else np.zeros((0, TOPK), np.int32)
    if len(topk) != len(evals):
        raise EvaluationError(f"{client.device.name}: {len(topk)} predictions for {len(evals)} images")
    top1, top5, c1, c5 = score(topk, evals.labels)
    return DeviceAccuracy(top1, top5, len(evals), evals.fingerprint, c1, c5, compute_s, transfer_s, wall_s, topk)
