"""Design spaces for the tuning tasks.

``dlas`` (default): a project kernel's space is its own default schedule with the register tile sampled
(``schedule_cpu.register_tile``), searched by MetaSchedule's evolutionary search and cost model; this is
the AutoTVM/Ansor idea of a template with knobs, kept small enough to pay off within a few hundred trials
on a small device. Functions without a project kernel (pooling, reshapes, reductions) use MetaSchedule's
generic rules. ``metaschedule``: MetaSchedule's generic rules everywhere (Ansor-style sketches).
``both``: the union.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from ..errors import DlasError
from ..lower import schedule_cpu
from ..lower.targets import target_info


class SpaceError(DlasError, ValueError):
    """An unknown design space name."""

SPACES = ("dlas", "metaschedule", "both")
UNROLL_STEPS = (0, 16, 64, 512)


def has_project_kernel(mod: Any) -> bool:
    sch = s_tir.Schedule(mod)
    return schedule_cpu.find_anchor(sch) is not None


class KernelTemplate:
    """``ScheduleFn`` body: the project's schedule with sampled register tiles."""

    def __init__(self, target: Any) -> None:
        self.info = target_info(target)

    def __call__(self, sch: s_tir.Schedule) -> None:
        token = schedule_cpu.SAMPLING.set(True)
        try:
            schedule_cpu.apply_schedule(sch, self.info)
        finally:
            schedule_cpu.SAMPLING.reset(token)
        # second knob: explicit unrolling of the loop nests (realized by RewriteParallelVectorizeUnroll)
        unroll = sch.sample_categorical(candidates=list(UNROLL_STEPS), probs=[1 / len(UNROLL_STEPS)] * len(UNROLL_STEPS))
        sch.annotate(sch.get_sblock("root"), "meta_schedule.unroll_explicit", unroll)


def space_for(mod: Any, target: Any, space: str) -> Any:
    """The space generator for one task (CPU targets; GPU targets take MetaSchedule's rules)."""
    if space not in SPACES:
        raise SpaceError(f"unknown design space {space!r}; known: {', '.join(SPACES)}")
    is_gpu = target_info(target).is_gpu
    if is_gpu or space == "metaschedule" or not has_project_kernel(mod):
        return ms.space_generator.PostOrderApply()
    template = ms.space_generator.ScheduleFn(
        KernelTemplate(target), sch_rules=[], postprocs=[ms.postproc.RewriteParallelVectorizeUnroll()],
        mutator_probs={ms.mutator.MutateTileSize(): 0.8, ms.mutator.MutateUnroll(): 0.2})
    if space == "dlas":
        return template
    return ms.space_generator.SpaceGeneratorUnion([template, ms.space_generator.PostOrderApply()])


def default_schedule(mod: Any, target: Any) -> s_tir.Schedule | None:
    """The untuned schedule of a task as a traced Schedule (its trace is the task's seed record).

    None on GPU targets: their defaults come from dlight rules, whose traces are not replayable records.
    """
    info = target_info(target)
    if info.is_gpu:
        return None
    sch = s_tir.Schedule(mod)
    schedule_cpu.apply_schedule(sch, info)
    return sch
