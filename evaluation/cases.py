"""The cases of an evaluation: each a CT series folder and its reference label file.

Two ways to name them:

- a folder of case folders, each holding ``dicom/`` and one label file
  (``labels.seg.dcm``, ``labels.nii.gz`` or ``labels.nii``), the layout
  ``cacnode phantom`` writes.  A case folder without a label file is a case
  whose reference has no calcium only when its ``truth.json`` (the phantom's
  ``cacnode score --json``) gives a total Agatston of 0: a DICOM SEG needs at
  least one segment (PS3.3 C.8.20.4), so an annotation without calcium often
  has no file at all, but a label file that merely went missing must not
  read as "no calcium";
- a CSV with the header ``series_dir,labels``, paths relative to the CSV's
  folder; an empty ``labels`` cell means the reference has no calcium.

A case that is visibly broken while listing (no ``dicom/``, no label file)
carries its ``problem`` and is reported as skipped; an input that names no
usable case at all is an :class:`~pipeline.errors.CacnodeError`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import CacnodeError

LABEL_FILES: tuple[str, ...] = ("labels.seg.dcm", "labels.nii.gz", "labels.nii")
CSV_COLUMNS: tuple[str, ...] = ("series_dir", "labels")


@dataclass(frozen=True)
class Case:
    """One series to score and the reference it is compared with."""

    name: str  # the case folder's name, or the CSV's series_dir cell
    series_dir: Path
    labels: Path | None  # None: the reference annotation has no calcium
    problem: str | None = None  # why the case cannot be scored, when already known from listing it


def find_cases(source: Path, ignore: Path | None = None) -> list[Case]:
    """The cases named by ``source``: a ``.csv`` file, otherwise a folder of case folders.

    ``ignore`` is a folder that is no case even when it lies among them: the
    report's own output folder, when it was put beside the cases.

    Raises
    ------
    CacnodeError
        ``source`` is missing, or names no case.
    """
    source = Path(source)
    if source.suffix.lower() == ".csv":
        return cases_from_csv(source)
    return cases_from_folder(source, ignore)


def cases_from_folder(folder: Path, ignore: Path | None = None) -> list[Case]:
    """One case per sub-folder of ``folder`` (hidden ones and ``ignore`` aside), in name order."""
    if not folder.is_dir():
        raise CacnodeError(f"{folder} does not exist" if not folder.exists() else
                           f"{folder} is neither a folder of cases nor a .csv file")
    if (folder / "dicom").is_dir():
        raise CacnodeError(f"{folder} is one case (it holds dicom/); give the folder that holds the case folders")
    skip = None if ignore is None else Path(ignore).resolve()
    subfolders = sorted(p for p in folder.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and p.resolve() != skip)
    if not subfolders:
        raise CacnodeError(f"{folder} holds no case folders (each with dicom/ and {', '.join(LABEL_FILES)})")
    return [_folder_case(p) for p in subfolders]


def _folder_case(folder: Path) -> Case:
    series_dir = folder / "dicom"
    if not series_dir.is_dir():
        return Case(folder.name, series_dir, None, problem="no dicom/ folder")
    present = [folder / name for name in LABEL_FILES if (folder / name).is_file()]
    if len(present) > 1:
        names = " and ".join(p.name for p in present)
        return Case(folder.name, series_dir, None, problem=f"holds {names}: keep the one reference")
    if present:
        return Case(folder.name, series_dir, present[0])
    return Case(folder.name, series_dir, None, problem=_no_calcium_problem(folder / "truth.json"))


def _no_calcium_problem(truth_json: Path) -> str | None:
    """None when ``truth_json`` says the case has no calcium, else why the missing label file is a problem."""
    missing = f"no label file ({', '.join(LABEL_FILES)})"
    if not truth_json.is_file():
        return f"{missing} and no truth.json saying the reference has no calcium"
    try:
        total = float(json.loads(truth_json.read_text(encoding="utf-8"))["total"]["agatston"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{missing}, and truth.json is unreadable ({type(exc).__name__}: {exc})"
    if math.isnan(total) or total != 0:
        return f"{missing}, but truth.json gives a total Agatston of {total:.1f}, not 0"
    return None


def cases_from_csv(path: Path) -> list[Case]:
    """The rows of a ``series_dir,labels`` CSV as cases (paths relative to the CSV's folder)."""
    if not path.is_file():
        raise CacnodeError(f"case list {path} does not exist")
    base = path.resolve().parent
    cases: list[Case] = []
    seen: set[str] = set()
    # utf-8-sig: spreadsheet programs often write a byte order mark before the header.
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in reader.fieldnames or []]
        if sorted(header) != sorted(CSV_COLUMNS):
            raise CacnodeError(f"{path}: header must be {','.join(CSV_COLUMNS)}, found {','.join(header) or 'none'}")
        for row in reader:
            if None in row:  # DictReader files surplus cells under None
                raise CacnodeError(f"{path}: line {reader.line_num} has more than {len(CSV_COLUMNS)} cells")
            cells = {k.strip(): (v or "").strip() for k, v in row.items()}
            name = cells["series_dir"]
            if not name:
                raise CacnodeError(f"{path}: line {reader.line_num}: series_dir is empty")
            if name in seen:
                raise CacnodeError(f"{path}: line {reader.line_num}: series_dir {name} is listed twice")
            seen.add(name)
            labels = base / cells["labels"] if cells["labels"] else None  # an absolute cell stays absolute
            cases.append(Case(name, base / name, labels))
    if not cases:
        raise CacnodeError(f"{path}: no cases listed under the header")
    return cases
