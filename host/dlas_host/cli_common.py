"""What every ``dlas-host`` command module shares: consoles, one-line errors, common options (the DLAS
dimensions' options generated from ``dlas_host.dimensions``), the build-spec parser and ``--json`` output.

It imports no command module, so ``cli.py``, ``cli_sweep.py``, ``cli_tune.py`` and ``images.py`` all sit above it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console

from . import dimensions
from .errors import DlasError

JsonOpt = typer.Option(False, "--json", help="print exactly one JSON document on stdout (progress goes to stderr)")


def _encode(value: Any) -> Any:
    """What json cannot encode itself: dataclasses and pydantic models as objects, anything else (paths,
    dates, enums) as its string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def to_json(obj: Any) -> str:
    """The one serialisation of ``--json`` output: keys sorted, two-space indent."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_encode)


def emit_json(obj: Any) -> None:
    """Print ``obj`` as the command's only output on stdout."""
    sys.stdout.write(to_json(obj) + "\n")
    sys.stdout.flush()


# Rich assumes 80 columns when stdout is not a terminal (CI logs, pipes); tables need more.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DevicesOpt = typer.Option(None, "--devices", envvar="DLAS_DEVICES", help="devices.yaml to use")
DbOpt = typer.Option(None, "--db", envvar="DLAS_RESULTS_DB", help="results database (SQLite file)")


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Known bad input (any ``DlasError``) or an OS error on a named file becomes one red line and a non-zero
    exit. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except (DlasError, OSError) as exc:
        fail(str(exc))


@contextmanager
def status(message: str, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    if quiet:
        yield lambda _msg: None
        return
    with err.status(message) as spinner:
        yield lambda msg: spinner.update(msg)


def registry_of(devices_file: Optional[Path]):
    from .devices import load  # noqa: PLC0415

    return load(devices_file)


def store_of(db: Optional[Path]):
    from .store import ResultStore  # noqa: PLC0415

    return ResultStore(db)


def build_spec(model: str, dataset: str, batch: int, algorithm: str, layout: str, sparse_format: str,
               sparsity: float, quantize: Optional[str], tuning: str, checkpoint: Optional[Path],
               optimized_model: Optional[str], seed: int = 0, bsr_block: str = "4x1"):
    from . import zoo  # noqa: PLC0415 - torch/TVM only when a command builds
    from .compile import BuildSpec  # noqa: PLC0415
    from .lower.policy import LoweringPolicy, parse_block  # noqa: PLC0415

    zoo.spec(model), zoo.dataset(dataset)  # validate early, with the list of known names
    dimensions.get("quantization").check(quantize or "float32")
    dimensions.get("tuning").check(tuning)
    quantize = None if quantize == "float32" else quantize
    policy = LoweringPolicy(algorithm=algorithm, layout=layout, sparse_format=sparse_format, sparsity=sparsity,
                            bsr_block=parse_block(bsr_block)).validate()
    return BuildSpec(model=model, dataset=dataset, batch=batch, seed=seed, policy=policy, quantize=quantize,
                     tuning=tuning, checkpoint=str(checkpoint) if checkpoint else None, optimized_model=optimized_model)


def dim_option(name: str, flag: str | None = None) -> Any:
    """The option of a DLAS dimension, default and help taken from its declaration (dlas_host.dimensions)."""
    dim = dimensions.get(name)
    return typer.Option(dim.default, flag or f"--{name.replace('_', '-')}", help=dim.help_text())
