"""What a rule returns: a sentence, the rows behind it, and the pairs it compared."""

from __future__ import annotations

from dataclasses import dataclass, field

from .stats import Comparison

# Finding kinds: the DLAS findings, then notes on the data itself.
BEST_SYSTEM = "best-system"
ALGORITHM = "algorithm"
TUNING = "tuning-changes-best"
QUANTIZATION = "quantization-native"
SPARSE = "sparse-crossover"
COMPRESSION = "compression-hardware"
CORRELATION = "correlation"
ACCURACY = "accuracy-cost"
TRANSFER = "transfer-share"
UNSTABLE = "unstable"
EMULATED = "emulated"
FAILURES = "failures"

DLAS_KINDS = (BEST_SYSTEM, ALGORITHM, TUNING, QUANTIZATION, SPARSE, COMPRESSION, ACCURACY, CORRELATION, TRANSFER)
QUALITY_KINDS = (UNSTABLE, EMULATED, FAILURES)
TITLES = {
    BEST_SYSTEM: "Best system per device",
    ALGORITHM: "Algorithms",
    TUNING: "Auto-tuning and the best algorithm",
    QUANTIZATION: "Quantized types and native hardware support",
    SPARSE: "Sparse formats: the per-device crossover",
    COMPRESSION: "Compression speedups depend on the hardware",
    ACCURACY: "Accuracy cost of each compression",
    CORRELATION: "Size, accuracy and latency",
    TRANSFER: "Host-device transfer share of end-to-end time",
    UNSTABLE: "Unstable timings",
    EMULATED: "Timings under emulation",
    FAILURES: "Jobs without a timing",
}


@dataclass(frozen=True)
class Pair:
    """Two rows that differ only in the dimension a rule studies; ``cand`` is measured against ``base``."""

    base: int
    cand: int
    base_label: str
    cand_label: str
    comparison: Comparison
    unstable: tuple[int, ...] = ()  # ids of either row whose timing was flagged unstable
    note: str = ""  # e.g. "80 % sparse"


@dataclass
class Finding:
    rule: str  # the kind, one of the constants above
    text: str
    rows: list[int] = field(default_factory=list)  # evidence rows
    pairs: list[Pair] = field(default_factory=list)
    device: str = ""
    significant: bool = False  # states a difference (or a correlation) the samples support
    outcome: str = ""  # the finding in a few words, to count alike findings in a summary
    scope: str = ""  # what alike findings are summarised over (a device, a compression)
    details: list[str] = field(default_factory=list)  # the per-group sentences a summary stands for
    flagged: list[int] = field(default_factory=list)  # rows used whose timing was flagged unstable

    def __post_init__(self) -> None:
        """A finding that rests on a timing flagged unstable says so in its own words (also where only the
        text travels, as in the CLI's list)."""
        self.flagged = sorted(set(self.flagged) | {i for p in self.pairs for i in p.unstable})
        if self.flagged and not self.quality and "flagged unstable:" not in self.text:
            ids = ", ".join(f"#{i}" for i in self.flagged[:10]) + (
                f" and {len(self.flagged) - 10} more" if len(self.flagged) > 10 else "")
            note = f" (caution: uses timing(s) flagged unstable: {ids})"
            self.text = self.text[:-1] + note + "." if self.text.endswith(".") else self.text + note

    @property
    def kind(self) -> str:
        return self.rule

    @property
    def quality(self) -> bool:
        return self.rule in QUALITY_KINDS

    @property
    def unstable(self) -> list[int]:
        return self.flagged
