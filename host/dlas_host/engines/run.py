"""Entry point of an engine subprocess: ``python -m dlas_host.engines.run ENGINE SPEC_JSON OUT_NPZ``.

Prints one JSON line: {"ok": true, "samples_ms": [...]} or {"ok": false, "skipped": bool, "error": "..."}.
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np


def main() -> None:
    engine, spec_json, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
    from ..compile import BuildSpec
    from . import ENGINES, EngineUnavailable

    raw = json.loads(spec_json)
    opts = raw.pop("_run")
    spec = BuildSpec.from_dict(raw)
    try:
        module = importlib.import_module(ENGINES[engine])
        samples, outputs = module.run(spec, opts["threads"], opts["number"], opts["repeat"], opts["warmup"])
    except EngineUnavailable as exc:
        print(json.dumps({"ok": False, "skipped": True, "error": str(exc)}))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        print(json.dumps({"ok": False, "skipped": False, "error": f"{type(exc).__name__}: {lines[-1] if lines else ''}"}))
        return
    np.savez(out_path, **{f"out{i}": o for i, o in enumerate(outputs)})
    print(json.dumps({"ok": True, "samples_ms": samples}))


if __name__ == "__main__":
    main()
