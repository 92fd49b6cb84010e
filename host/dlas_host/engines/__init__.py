"""Framework baselines, each timed in a fresh process with the device's thread count.

An engine module exposes ``run(spec, threads, number, repeat, warmup) -> (samples_ms, outputs, predict)``
(``predict``: a batch of images -> logits, for accuracy on the same loaded model) and is
started as ``python -m dlas_host.engines.run ENGINE`` so no two engines ever share a process (onnxruntime's
spinning threads make other engines in the same process look slower).
"""

import ast
import pkgutil
from pathlib import Path


def _discover() -> dict[str, str]:
    """{engine name: module} for every module here that declares ``ENGINE = "name"`` (read without importing
    it, so listing the engines never loads a framework). Adding a baseline is adding one such file."""
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        tree = ast.parse((Path(__file__).parent / f"{info.name}.py").read_text())
        for node in tree.body:
            if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["ENGINE"]
                    and isinstance(node.value, ast.Constant)):
                found[node.value.value] = f"{__name__}.{info.name}"
    return dict(sorted(found.items(), key=lambda kv: kv[0] != "torch"))  # the reference framework first


ENGINES = _discover()


class EngineUnavailable(RuntimeError):
    """The engine is not installed or cannot run this model here: the job is recorded as skipped."""
