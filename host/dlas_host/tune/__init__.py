"""Remote auto-scheduling (the successor of Ansor: TVM MetaSchedule) over the agents' RPC.

Data flow, MetaSchedule's Builder / Runner / Database split:

* ``tasks``: the model as it will really be compiled (quantized, lowered onto the project's kernels,
  fused, *not* scheduled) gives one tuning task per distinct PrimFunc.
* ``space``: each kernel's design space is the project's own default schedule with its register tile
  as a sampled decision (plus, on request, MetaSchedule's generic rules); other functions use the
  generic rules.
* ``build``: candidates are compiled on the host in parallel and exported as shared libraries (with the
  device's cross compiler), so agents stay runtime-only.
* ``measure``: candidates are timed on the device through the agent's ``dlas.time_kernel``, over the
  same transports as benchmarks (local, SSH tunnel, tracker queue), with reconnects and separate
  build / upload / queue / run timeouts.
* ``records``: one MetaSchedule JSON database per target in the data directory, committed batch by
  batch, seeded with each task's default schedule so a tuned build is never slower than untuned.
* ``apply``: ``build_tuned`` compiles a model with the best record per task (default schedule where
  there is none).
"""

from __future__ import annotations

from typing import Any


def tuning_target(target: Any, threads: int = 0) -> Any:
    """The device target with ``num-cores`` set (MetaSchedule's CPU rules need it; codegen ignores it)."""
    import os  # noqa: PLC0415

    import tvm  # noqa: PLC0415

    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    config = dict(target.export())
    config["num-cores"] = int(threads or os.cpu_count() or 1)
    return tvm.target.Target(config)
