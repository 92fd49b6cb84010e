"""Entry point of an engine subprocess: ``python -m dlas_host.engines.run ENGINE SPEC_JSON OUT_NPZ``.

Prints one JSON line: {"ok": true, "samples_ms": [...]} or {"ok": false, "skipped": bool, "error": "..."}.
With ``_run.eval`` ({"images": .npy path, "batch": B, "k": K}) the engine's model also runs over those images
in batches of B (the last one padded) and the npz gains ``topk`` (N, K) class indices, best first; the reply
gains ``eval_compute_s``, the time inside the model calls. With ``_run.profile`` ({"runs": R}) an engine that
has ``node_profile`` replies {"ok": true, "nodes": [...]} (per node: op, input shapes, median kernel ms).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Callable

import numpy as np


def evaluate(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int,
             k: int) -> tuple[np.ndarray, float]:
    """Top-k indices of ``predict`` over ``images`` in whole batches, and the seconds spent in ``predict``."""
    from dlas_agent.evaluate import topk_of

    picks, compute_s = [], 0.0
    for start in range(0, len(images), batch):
        part = images[start:start + batch]
        short = batch - len(part)
        if short:
            part = np.concatenate([part, np.repeat(part[-1:], short, axis=0)])
        t0 = time.perf_counter()
        logits = predict(np.ascontiguousarray(part, dtype=np.float32))
        compute_s += time.perf_counter() - t0
        picks.append(topk_of(logits, k)[:batch - short])
    return (np.concatenate(picks) if picks else np.zeros((0, k), np.int32)), compute_s


def main() -> None:
    engine, spec_json, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
    from ..compile import BuildSpec
    from . import ENGINES, EngineUnavailable

    raw = json.loads(spec_json)
    opts = raw.pop("_run")
    spec = BuildSpec.from_dict(raw)
    reply: dict = {"ok": True}
    try:
        module = importlib.import_module(ENGINES[engine])
        if opts.get("profile"):  # per-node kernel times from the engine's own profiler, nothing else
            if not hasattr(module, "node_profile"):
                raise EngineUnavailable(f"{engine} has no per-node profile")
            nodes = module.node_profile(spec, opts["threads"], int(opts["profile"]["runs"]), opts["warmup"])
            print(json.dumps({"ok": True, "nodes": nodes}))
            return
        samples, outputs, predict = module.run(spec, opts["threads"], opts["number"], opts["repeat"],
                                               opts["warmup"])
        arrays = {f"out{i}": o for i, o in enumerate(outputs)}
        if opts.get("eval"):
            ev = opts["eval"]
            images = np.load(ev["images"], allow_pickle=False)
            arrays["topk"], reply["eval_compute_s"] = evaluate(predict, images, int(ev["batch"]), int(ev["k"]))
    except EngineUnavailable as exc:
        print(json.dumps({"ok": False, "skipped": True, "error": str(exc)}))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        print(json.dumps({"ok": False, "skipped": False, "error": f"{type(exc).__name__}: {lines[-1] if lines else ''}"}))
        return
    np.savez(out_path, **arrays)
    reply["samples_ms"] = samples
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
