"""The phantom families: two independently written generators behind one call.

Family ``a`` is ``training.phantom`` and family ``b`` is ``training.phantom_b``:
different anatomy, coronary courses, lesions, distractors and noise, with the
same truth contract (the written DICOM series, its true labels and its
``truth.json``).  A model trained on one family and tested on the other shows
how far it generalises beyond one generator's habits (leave-one-family-out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydicom.dataset import Dataset

Family = Literal["a", "b"]
FAMILIES: tuple[Family, ...] = ("a", "b")


class Phantom(Protocol):
    """What the training and evaluation code reads of a generated case of either family."""

    seed: int
    hu: np.ndarray  # float32, ascending z, exactly the HU the files encode
    labels: np.ndarray  # uint8 0-4
    datasets: list[Dataset]  # the CT series as written
    truth: dict[str, Any]  # ``cacnode score --json`` of the series with the true labels


def revision(family: Family) -> int:
    """The generator's revision: a case cached from another revision is another case."""
    if family == "a":
        from training.phantom import REVISION
    else:
        from training.phantom_b import REVISION
    return REVISION


def generate(family: Family, seed: int, *, shifted: bool = False, hard_ostia: bool = False) -> Phantom:
    """Phantom ``seed`` of ``family`` (``shifted`` and ``hard_ostia`` are family ``a`` variants)."""
    if family == "a":
        from training.phantom.generate import generate_case

        return generate_case(seed, shifted=shifted, hard_ostia=hard_ostia)
    if family != "b":
        raise ValueError(f"unknown phantom family {family!r} (choose from {', '.join(FAMILIES)})")
    if shifted or hard_ostia:
        raise ValueError("phantom family b has no shifted or hard-ostia variant")
    from training.phantom_b.generate import generate_case as generate_b

    return generate_b(seed)


def write(family: Family, case: Phantom, out_dir: Path) -> Path:
    """Write ``case`` of ``family`` in the case layout (``training.phantom.generate``); returns its folder."""
    if family == "a":
        from training.phantom.generate import write_case
    else:
        from training.phantom_b.generate import write_case
    return write_case(case, out_dir)  # type: ignore[arg-type]


def split_across(families: tuple[Family, ...], first_seed: int, n: int) -> list[tuple[Family, int]]:
    """``n`` phantoms taken from ``families`` in turn, each family counting its own seeds from ``first_seed``."""
    counts = {f: 0 for f in families}
    out = []
    for i in range(n):
        family = families[i % len(families)]
        out.append((family, first_seed + counts[family]))
        counts[family] += 1
    return out
