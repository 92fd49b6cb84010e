"""Pruning and quantization specs: small immutable values with a text form for the CLI and for model ids.

Prune spec text: ``kind:scope:score:amount[:key=value...]``, e.g. ``unstructured:global:l1:0.8``,
``channel:layer:taylor:0.5``, ``block:global:l1:0.7:block=1x8:steps=3``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from ..errors import DlasError

PRUNE_KINDS = ("unstructured", "channel", "block")
PRUNE_SCOPES = ("global", "layer")
PRUNE_SCORES = ("l1", "grad", "taylor")
QUANT_DTYPES = ("fp16", "bf16", "int8")
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")


class SpecError(DlasError, ValueError):
    """A pruning or quantization spec that does not parse; the message is one line."""


def _choice(what: str, value: str, allowed: tuple[str, ...], text: str) -> str:
    if value not in allowed:
        raise SpecError(f"bad {what} {value!r} in {text!r}; expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class PruneSpec:
    kind: str = "unstructured"
    scope: str = "global"
    score: str = "l1"
    amount: float = 0.5
    # rows x cols of the weight viewed as [out, kh*kw*in]; the lowering policy's default BSR block
    block: tuple[int, int] = (4, 1)
    steps: int = 1  # iterative schedule: reach ``amount`` in this many prune(+fine-tune) rounds
    score_batches: int = 4  # batches accumulated for grad / taylor scores

    def __post_init__(self) -> None:
        text = self.text()
        _choice("pruning kind", self.kind, PRUNE_KINDS, text)
        _choice("pruning scope", self.scope, PRUNE_SCOPES, text)
        _choice("pruning score", self.score, PRUNE_SCORES, text)
        if not 0.0 <= self.amount < 1.0:
            raise SpecError(f"pruning amount must be in [0, 1), got {self.amount} in {text!r}")
        if self.steps < 1 or self.score_batches < 1 or min(self.block) < 1:
            raise SpecError(f"steps, score_batches and block sizes must be >= 1 in {text!r}")

    @property
    def needs_data(self) -> bool:
        return self.score in ("grad", "taylor")

    def text(self) -> str:
        out = f"{self.kind}:{self.scope}:{self.score}:{self.amount:g}"
        if self.kind == "block":
            out += f":block={self.block[0]}x{self.block[1]}"
        if self.steps != 1:
            out += f":steps={self.steps}"
        return out

    @classmethod
    def parse(cls, text: str) -> "PruneSpec":
        parts = [p.strip() for p in text.strip().split(":")]
        if len(parts) < 4:
            raise SpecError(f"prune spec {text!r} must be kind:scope:score:amount (e.g. unstructured:global:l1:0.8)")
        kind, scope, score, amount_s = parts[:4]
        _choice("pruning kind", kind, PRUNE_KINDS, text)
        _choice("pruning scope", scope, PRUNE_SCOPES + ("layerwise", "local"), text)
        scope = "layer" if scope in ("layerwise", "local") else scope
        _choice("pruning score", score, PRUNE_SCORES, text)
        try:
            amount = float(amount_s.rstrip("%")) / (100.0 if amount_s.endswith("%") else 1.0)
        except ValueError:
            raise SpecError(f"pruning amount {amount_s!r} in {text!r} is not a number") from None
        kw: dict = {}
        for extra in parts[4:]:
            key, _, val = extra.partition("=")
            if key not in ("block", "steps", "score_batches"):
                raise SpecError(f"unknown prune option {key!r} in {text!r}; known: block=RxC, steps=N, "
                                "score_batches=N")
            try:
                if key == "block":
                    r, c = val.lower().split("x")
                    kw["block"] = (int(r), int(c))
                elif key in ("steps", "score_batches"):
                    kw[key] = int(val)
            except ValueError:
                raise SpecError(f"bad value for {key!r} in {text!r}") from None
        return cls(kind, scope, score, amount, **kw)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QuantSpec:
    dtype: str = "int8"
    calib_method: str = "percentile"
    calib_samples: int = 256
    percentile: float = 99.99
    # int8: which layers stay in float (precision-sensitive); indices in conv/matmul execution order
    skip_first: bool = False
    skip_last: bool = False
    quantize_depthwise: bool = True

    def __post_init__(self) -> None:
        _choice("quantization dtype", self.dtype, QUANT_DTYPES, self.dtype)
        _choice("calibration method", self.calib_method, CALIB_METHODS, self.calib_method)
        if self.calib_samples < 1:
            raise SpecError(f"calib_samples must be >= 1, got {self.calib_samples}")
        if not 50.0 < self.percentile <= 100.0:
            raise SpecError(f"percentile must be in (50, 100], got {self.percentile}")

    @classmethod
    def parse(cls, text: str, **kw) -> "QuantSpec":
        dtype = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(text.strip().lower(), text.strip().lower())
        if dtype not in QUANT_DTYPES:
            raise SpecError(f"unknown quantization {text!r}; expected one of {', '.join(QUANT_DTYPES)}")
        return cls(dtype, **kw)

    def text(self) -> str:
        if self.dtype != "int8":
            return self.dtype
        return f"int8:{self.calib_method}:{self.calib_samples}"

    def as_dict(self) -> dict:
        return asdict(self)
