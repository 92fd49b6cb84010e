"""The accuracy each compression costs: a compressed build's top-1 against its base's, on the same device,
system and evaluation images (same fingerprint), with Newcombe's 95 % interval on the difference.

A row's base is the uncompressed float32 dense build of the model it was derived from: the stored model's
``base_id`` (``extra.model``, written by bench), or, for a model without a stored lineage, the same model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..findings import ACCURACY, Finding
from ..rows import Meas, latest_ok
from ..stats import proportion_drop

MATCH = ("algorithm", "layout", "tuning")  # preferred agreement between a row and its base


@dataclass(frozen=True)
class Drop:
    """One compressed row against its base: top-1 drop in points with its 95 % interval."""

    base: Meas
    cand: Meas
    label: str
    drop: float  # base top-1 - candidate top-1 (fraction; > 0: the compression lost accuracy)
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def clause(self) -> str:
        pts = f"{100 * abs(self.drop):.1f} points"
        ci = f"95 % CI {100 * self.low:+.1f} to {100 * self.high:+.1f}"
        top = f"{100 * self.cand.top1:.1f} %" if self.cand.top1 is not None else "?"
        if not self.significant:
            return f"{self.label}: no significant change ({top}; drop {100 * self.drop:+.1f} points, {ci})"
        verb = "costs" if self.drop > 0 else "gains"
        return f"{self.label} {verb} {pts} ({top}; {ci})"


def root(m: Meas) -> str:
    """The model a row's build descends from: its stored base, its own stored model, or the seeded weights."""
    lin = m.lineage
    if lin.get("base_id"):
        return str(lin["base_id"])
    if lin.get("id"):
        return str(lin["id"])
    pruning = m["pruning"]
    return pruning[len("model:"):] if pruning.startswith("model:") else "seeded weights"


def derived(m: Meas) -> bool:
    """Pruned (stored with a base, or pruned at build time) rather than the model as trained."""
    return bool(m.lineage.get("base_id")) or m["pruning"].startswith("random:") or (
        m["pruning"] not in ("none",) and not m["pruning"].startswith("model:"))


def is_base(m: Meas) -> bool:
    return not derived(m) and m["quantization"] == "float32" and m["sparse_format"] == "dense"


def compression(m: Meas) -> str:
    """What was done to the base, in words: ``unstructured:global:l1:0.9 (90 % zeros stored), fine-tuned 1
    epoch + int8 + CSR``."""
    lin, parts = m.lineage, []
    if derived(m):
        prune = lin.get("prune") or m["pruning"]
        tuned = (lin.get("finetune") or {}).get("finetune_epochs") if isinstance(lin.get("finetune"), dict) else None
        parts.append(f"pruning {prune} ({100 * m.sparsity:.0f} % zeros stored)"
                     + (f", fine-tuned {tuned} epoch{'s' if tuned != 1 else ''}" if tuned else ""))
    if m["quantization"] != "float32":
        parts.append(m["quantization"])
    if m["sparse_format"] != "dense":
        parts.append(m["sparse_format"].upper() + (f" {m['sparse_block']}" if m["sparse_block"] else ""))
    return " + ".join(parts) or "none"


def _group_key(m: Meas) -> tuple:
    a = m.axes
    return (m.sweep_id, a["device"], a["target"], a["dataset"], a["model"], a["batch"], a["system"],
            m.eval_fingerprint, root(m))


def drops(meas: list[Meas]) -> list[Drop]:
    """Every compressed row with an accuracy, against its base (rows without a base measured are left out)."""
    grouped: dict[tuple, list[Meas]] = defaultdict(list)
    for m in latest_ok(meas):
        if m.top1 is not None and m.eval_images and m.hits1 is not None:
            grouped[_group_key(m)].append(m)
    out = []
    for members in grouped.values():
        bases = [m for m in members if is_base(m)]
        if not bases:
            continue
        for m in members:
            if is_base(m):
                continue
            base = max(bases, key=lambda b: (sum(b[k] == m[k] for k in MATCH), b.id))
            d, low, high = proportion_drop(base.hits1, base.eval_images, m.hits1, m.eval_images)  # type: ignore[arg-type]
            out.append(Drop(base, m, compression(m), d, low, high))
    return sorted(out, key=lambda x: (x.base.id, x.cand.id))


def base_name(m: Meas) -> str:
    """``resnet18-digits-e3 (resnet18/digits)``: the base a compression is measured against."""
    lin, pruning = m.lineage, m["pruning"]
    stored = pruning[len("model:"):] if pruning.startswith("model:") else ""
    name = lin.get("name") or (lin.get("id") and f"model {lin['id']}") or (stored and f"model {stored}")
    return f"{name} ({m['model']}/{m['dataset']})" if name else f"{m['model']}/{m['dataset']} (seeded weights)"


def accuracy_cost(meas: list[Meas]) -> list[Finding]:
    """One finding per base, device and system: what each compression of that base cost in top-1."""
    per_base: dict[tuple[int, str], list[Drop]] = defaultdict(list)
    for d in drops(meas):
        per_base[(d.base.id, d.cand["system"])].append(d)
    found = []
    for (_, system), items in sorted(per_base.items()):
        # several bases measured (algorithms, layouts): one sentence per compression, against its closest base
        first = {}
        for d in items:
            first.setdefault(d.label, d)
        base = items[0].base
        dev = base["device"]
        head = (f"On {dev} ({system}), against {base_name(base)} at {100 * base.top1:.1f} % top-1 "
                f"over {base.eval_images} images")
        text = f"{head}: {'; '.join(d.clause() for d in first.values())}."
        rows = sorted({i for d in items for i in (d.base.id, d.cand.id)})
        sig = any(d.significant for d in first.values())
        found.append(Finding(ACCURACY, text, rows, [], dev, sig,
                             "a compression changes accuracy" if sig else "no significant accuracy change", dev))
    return found
