"""Labels of the flat ImageNet validation layout (all ``ILSVRC2012_val_*.JPEG`` in ``val/``) from a ground-truth file.

Accepted files, looked for in ``val/``, the dataset root and ``<root>/ILSVRC2012_devkit_t12/data`` (first the
first name below in each, then the next name, ...):

- ``ILSVRC2012_validation_ground_truth.txt`` (the official devkit file): line *i* is the 1-based ILSVRC2012
  class id of ``ILSVRC2012_val_<i, 8 digits>``; ids count in the devkit's order, mapped here through
  ``synsets.DEVKIT`` (no ``meta.mat`` needed).
- ``LOC_val_solution.csv`` (Kaggle's ImageNet localization challenge): header ``ImageId,PredictionString``, then
  ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...``; the first word of the prediction string is the class.
- ``val_labels.txt`` or Caffe's ``val.txt``: one ``<file name> <label>`` per line (space, tab or comma), the label
  a WordNet id or an index 0..999 in the standard (sorted) order.

Every label becomes the class's index in the standard 1000-class order, whatever subset of images is present.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from . import synsets
from .info import DatasetError

OFFICIAL = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE = "LOC_val_solution.csv"
PAIRS = ("val_labels.txt", "val.txt")
GROUND_TRUTH_FILES = (OFFICIAL, KAGGLE, *PAIRS)

_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")


def find(val_dir: Path, root: Path) -> Path | None:
    """The first ground-truth file present, by file-name preference, then by directory."""
    dirs = (val_dir, root, root / "ILSVRC2012_devkit_t12" / "data")
    for name in GROUND_TRUTH_FILES:
        for d in dirs:
            if (d / name).is_file():
                return d / name
    return None


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"ground-truth file {path} is not text") from None
    except OSError as exc:
        raise DatasetError(f"ground-truth file {path} is unreadable: {exc.strerror or exc}") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DatasetError(f"ground-truth file {path} is empty")
    return lines


def _official(path: Path) -> Callable[[Path], int | None]:
    lines = _lines(path)
    while not lines[-1].strip():  # trailing blank lines
        lines.pop()
    labels: list[int] = []
    for n, line in enumerate(lines, 1):
        word = line.strip()
        if not word.isdigit() or not 1 <= int(word) <= synsets.NUM_CLASSES:
            raise DatasetError(f"ground-truth file {path} line {n}: expected an ILSVRC2012 class id 1..1000, "
                               f"got {word[:40]!r}")
        labels.append(synsets.devkit_to_standard(int(word)))

    def label(image: Path) -> int | None:
        m = _VAL_NUMBER.fullmatch(image.stem)
        if m is None:
            raise DatasetError(f"image {image} is not named ILSVRC2012_val_<8 digits>, which {path.name} "
                               "needs to find its line")
        number = int(m.group(1))
        return labels[number - 1] if 1 <= number <= len(labels) else None

    return label


def _class_of(path: Path, n: int, word: str) -> int:
    """A label word: a WordNet id of ImageNet-1k, or a standard index 0..999."""
    if synsets.is_wnid(word):
        index = synsets.standard_index(word)
        if index is None:
            raise DatasetError(f"ground-truth file {path} line {n}: {word} is not an ImageNet-1k class")
        return index
    if word.isdigit() and int(word) < synsets.NUM_CLASSES:
        return int(word)
    raise DatasetError(f"ground-truth file {path} line {n}: expected a WordNet id (like n01440764) or a class "
                       f"index 0..999, got {word[:40]!r}")


def _by_name(table: dict[str, int], path: Path) -> Callable[[Path], int | None]:
    def label(image: Path) -> int | None:
        return table.get(image.stem, table.get(image.name))

    return label


def _kaggle(path: Path) -> Callable[[Path], int | None]:
    lines = _lines(path)
    if lines[0].strip().replace(" ", "") != "ImageId,PredictionString":
        raise DatasetError(f"ground-truth file {path} does not start with the header ImageId,PredictionString")
    table: dict[str, int] = {}
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        image, _, prediction = line.partition(",")
        words = prediction.split()
        if not image.strip() or not words:
            raise DatasetError(f"ground-truth file {path} line {n}: expected ImageId,<synset> ..., "
                               f"got {line.strip()[:60]!r}")
        table[image.strip()] = _class_of(path, n, words[0])
    return _by_name(table, path)


def _pairs(path: Path) -> Callable[[Path], int | None]:
    table: dict[str, int] = {}
    for n, line in enumerate(_lines(path), 1):
        words = line.replace(",", " ").split()
        if not words:
            continue
        if len(words) != 2:
            raise DatasetError(f"ground-truth file {path} line {n}: expected '<file name> <label>', "
                               f"got {line.strip()[:60]!r}")
        table[words[0]] = _class_of(path, n, words[1])
    return _by_name(table, path)


_PARSERS: dict[str, Callable[[Path], Callable[[Path], int | None]]] = {
    OFFICIAL: _official, KAGGLE: _kaggle, **{name: _pairs for name in PAIRS}}


def labelled(images: list[Path], val_dir: Path, root: Path) -> list[tuple[Path, int]]:
    """``(image, standard label)`` for every image of a flat ``val_dir``; every image must have a label."""
    path = find(val_dir, root)
    if path is None:
        raise DatasetError(f"ImageNet directory {val_dir} holds images directly but no ground-truth file: put one "
                           f"of {', '.join(GROUND_TRUTH_FILES)} in it or in {root} (or sort the images into one "
                           "folder per class)")
    label = _PARSERS[path.name](path)
    out = []
    for image in images:
        y = label(image)
        if y is None:
            raise DatasetError(f"image {image} has no label in ground-truth file {path}")
        out.append((image, y))
    return out
