"""``cacnode evaluate``: the agreement maths on hand-made numbers, then the command on written phantoms."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cacnode.cli import main as cacnode_main
from evaluation.cases import Case, find_cases
from evaluation.metrics import (ArteryOutcome, CaseOutcome, artery_agreement, compare_by_artery, confusion_matrix,
                                limits_of_agreement, risk_confusion, score_truth, weighted_kappa)
from pipeline.reading.labels_io import series_affine
from pipeline.reading.loader import load_series
from pipeline.scoring.agatston import RISK_CATEGORIES, ScoringProfile, risk_category

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.toml"  # the bundled model
SEEDS = range(0, 5)  # family a: totals 38.9, 170.1, 14.7, 0 (seed 3) and 291.4
ZERO_SEED = 3
ARTERIES = ("LM", "LAD", "LCX", "RCA")


# -- the maths, on numbers whose answer is known ---------------------------------------------------


def outcome(true_total: float, pred_total: float) -> CaseOutcome:
    return CaseOutcome(true_total, pred_total, right_artery=0.0, detected=0.0, lesions=0, lesions_found=0,
                       false_positives=0)


def test_confusion_matrix_counts_rows_truth_columns_predicted() -> None:
    m = confusion_matrix([0, 0, 1, 4, 4, 4], [0, 1, 1, 3, 4, 4], 5)
    expected = np.zeros((5, 5), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[4, 3], expected[4, 4] = 1, 1, 1, 1, 2
    np.testing.assert_array_equal(m, expected)
    # The kappa is computed from the same table: perfect agreement is 1.
    assert weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 5) == pytest.approx(1.0)


def test_risk_confusion_uses_the_risk_categories() -> None:
    # Totals 0, 5, 50, 200, 500 fall in categories 0..4; 10 is still 1-10 and 400 still 101-400.
    cases = [outcome(0, 0), outcome(5, 10), outcome(50, 10.5), outcome(200, 400), outcome(500, 400.01), outcome(0, 3)]
    m = risk_confusion(cases)
    assert m.shape == (5, 5) and m.sum() == 6
    assert m[0, 0] == 1 and m[0, 1] == 1  # truth 0: one scored 0, one scored 3
    assert m[1, 1] == 1  # 5 -> 10
    assert m[2, 2] == 1  # 50 -> 10.5
    assert m[3, 3] == 1  # 200 -> 400
    assert m[4, 4] == 1  # 500 -> 400.01
    np.testing.assert_array_equal(m.sum(axis=1), [2, 1, 1, 1, 1])


def test_artery_agreement_icc_and_share_on_the_right_artery() -> None:
    per_case = [
        {"LM": ArteryOutcome(0, 0, 0), "LAD": ArteryOutcome(10, 10, 10), "LCX": ArteryOutcome(0, 4, 0),
         "RCA": ArteryOutcome(20, 5, 5)},
        {"LM": ArteryOutcome(0, 0, 0), "LAD": ArteryOutcome(30, 30, 24), "LCX": ArteryOutcome(0, 0, 0),
         "RCA": ArteryOutcome(60, 60, 60)},
    ]
    a = artery_agreement(per_case)
    assert a["LAD"].icc == pytest.approx(1.0)  # identical scores
    assert a["LAD"].right_artery == pytest.approx(34 / 40)
    assert a["RCA"].right_artery == pytest.approx(65 / 80)
    assert (a["RCA"].true_total, a["RCA"].pred_total) == (80.0, 65.0)
    assert math.isnan(a["LCX"].right_artery)  # no truth calcium in the LCX: nothing to find
    assert math.isnan(a["LM"].right_artery)
    # ICC(2,1) by hand for RCA, truth (20, 60) vs predicted (5, 60): rows means 12.5, 60; columns 40, 32.5.
    grand = 36.25
    ms_rows = 2 * ((12.5 - grand) ** 2 + (60 - grand) ** 2)
    ms_cols = 2 * ((40 - grand) ** 2 + (32.5 - grand) ** 2)
    ms_err = sum((y - grand) ** 2 for y in (20, 5, 60, 60)) - ms_rows - ms_cols
    expected = (ms_rows - ms_err) / (ms_rows + ms_err + 2 * (ms_cols - ms_err) / 2)
    assert a["RCA"].icc == pytest.approx(expected)


def test_compare_by_artery_on_a_constructed_volume() -> None:
    # 1 mm pixels, 3 mm increment (factor 1): LAD 2x2 px at 250 HU -> 4 mm2 x 2 = 8;
    # RCA 3x1 px at 450 HU -> 3 mm2 x 4 = 12.  The prediction finds the LAD and calls the RCA lesion LCX.
    hu = np.full((5, 20, 20), 40.0, dtype=np.float32)
    truth = np.zeros(hu.shape, dtype=np.uint8)
    hu[2, 4:6, 4:6], truth[2, 3:7, 3:7] = 250.0, 2
    hu[2, 12, 10:13], truth[2, 11:14, 9:14] = 450.0, 4
    pred = np.where(truth == 4, 3, truth).astype(np.uint8)
    profile = ScoringProfile()
    scored = score_truth(hu, truth, (1.0, 1.0), 3.0, profile)
    o, arteries = compare_by_artery(scored, hu, pred, (1.0, 1.0), 3.0, profile)
    assert (o.true_total, o.pred_total) == (pytest.approx(20.0), pytest.approx(20.0))
    assert arteries["LAD"] == ArteryOutcome(8.0, 8.0, 8.0)
    assert arteries["RCA"] == ArteryOutcome(12.0, 0.0, 0.0)
    assert arteries["LCX"] == ArteryOutcome(0.0, 12.0, 0.0)
    assert arteries["LM"] == ArteryOutcome(0.0, 0.0, 0.0)
    assert o.right_artery == pytest.approx(8.0) and o.detected == pytest.approx(20.0)


def test_limits_of_agreement_by_hand() -> None:
    limits = limits_of_agreement([0.0, 10.0, 20.0], [1.0, 12.0, 20.0])  # differences 1, 2, 0
    assert limits.mean_difference == pytest.approx(1.0)
    assert limits.sd_difference == pytest.approx(1.0)
    assert (limits.lower, limits.upper) == (pytest.approx(-0.96), pytest.approx(2.96))
    assert math.isnan(limits_of_agreement([5.0], [6.0]).sd_difference)


# -- finding the cases --------------------------------------------------------------------------


def test_case_folders_and_their_problems(tmp_path: Path) -> None:
    def case(name: str, *files: str, truth: float | None = None) -> None:
        (tmp_path / name / "dicom").mkdir(parents=True)
        for f in files:
            (tmp_path / name / f).write_bytes(b"")
        if truth is not None:
            (tmp_path / name / "truth.json").write_text(json.dumps({"total": {"agatston": truth}}))

    case("a-seg", "labels.seg.dcm")
    case("b-nifti", "labels.nii.gz")
    case("c-zero", truth=0.0)
    case("d-lost-labels", truth=12.5)
    case("e-none")
    case("f-two", "labels.seg.dcm", "labels.nii")
    (tmp_path / "g-no-dicom").mkdir()
    (tmp_path / "report").mkdir()  # the output folder, put beside the cases
    found = {c.name: c for c in find_cases(tmp_path, ignore=tmp_path / "report")}
    assert list(found) == ["a-seg", "b-nifti", "c-zero", "d-lost-labels", "e-none", "f-two", "g-no-dicom"]
    assert found["a-seg"] == Case("a-seg", tmp_path / "a-seg" / "dicom", tmp_path / "a-seg" / "labels.seg.dcm")
    assert found["b-nifti"].labels == tmp_path / "b-nifti" / "labels.nii.gz" and found["b-nifti"].problem is None
    assert found["c-zero"].labels is None and found["c-zero"].problem is None
    assert "12.5, not 0" in found["d-lost-labels"].problem
    assert "no label file" in found["e-none"].problem
    assert "labels.seg.dcm and labels.nii" in found["f-two"].problem
    assert found["g-no-dicom"].problem == "no dicom/ folder"


@pytest.mark.parametrize("text, message", [
    ("series,labels\na,b\n", "header must be series_dir,labels"),
    ("series_dir,labels\n", "no cases listed"),
    ("series_dir,labels\n,b.nii\n", "line 2: series_dir is empty"),
    ("series_dir,labels\na,\na,x.nii\n", "series_dir a is listed twice"),
])
def test_unusable_csv_is_one_line_exit_2(tmp_path: Path, capsys, text: str, message: str) -> None:
    (tmp_path / "cases.csv").write_text(text)
    rc = cacnode_main(["evaluate", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "out"),
                       "--config", str(CONFIG)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cacnode evaluate: error:") and message in err[0]
    assert not (tmp_path / "out").exists()  # the input is checked before the output is made


# -- the command on phantoms ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    assert cacnode_main(["phantom", str(out), "--n", str(len(SEEDS)), "--seed", str(SEEDS.start),
                         "--no-progress"]) == 0
    return out


def truth_of(case_dir: Path) -> dict:
    return json.loads((case_dir / "truth.json").read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def evaluated(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("report")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "cacnode.cli", "evaluate", str(phantoms), "--out", str(out),
                             "--config", str(CONFIG), "--device", "cpu", "--no-progress"],
                            capture_output=True, text=True, env=env)
    return result, out


def test_every_phantom_is_scored_with_the_truth_of_truth_json(phantoms: Path, evaluated) -> None:
    result, out = evaluated
    assert result.returncode == 0, result.stderr
    rows = read_csv(out / "cases.csv")
    assert [r["case"] for r in rows] == [f"case-{s:04d}" for s in SEEDS]
    for row in rows:
        truth = truth_of(phantoms / row["case"])
        assert row["status"] == "scored" and row["reason"] == ""
        assert row["series_uid"] == truth["series_uid"]
        assert float(row["truth_total"]) == pytest.approx(truth["total"]["agatston"], abs=1e-3)
        for name in ARTERIES:
            assert float(row[f"truth_{name}"]) == pytest.approx(truth["arteries"][name]["agatston"], abs=1e-3)
        assert row["truth_category"] == truth["risk_category"]
        assert row["predicted_category"] == risk_category(float(row["predicted_total"]))
        assert int(row["lesions_found"]) <= int(row["lesions"])
    assert float(rows[ZERO_SEED]["truth_total"]) == 0 and int(rows[ZERO_SEED]["lesions"]) == 0


def test_summary_json_holds_the_printed_figures(phantoms: Path, evaluated) -> None:
    result, out = evaluated
    summary = json.loads((out / "summary.json").read_text())
    rows = read_csv(out / "cases.csv")
    assert summary["cases"] == {"total": 5, "scored": 5, "skipped": 0} and summary["skipped"] == []
    # The 5x5 table: every scored case once, rows by truth category, columns by predicted.
    table = np.array(summary["risk_category"]["confusion_matrix"])
    assert table.shape == (5, 5) and table.sum() == 5
    truth_categories = [RISK_CATEGORIES.index(r["truth_category"]) for r in rows]
    predicted_categories = [RISK_CATEGORIES.index(r["predicted_category"]) for r in rows]
    np.testing.assert_array_equal(table.sum(axis=1), np.bincount(truth_categories, minlength=5))
    np.testing.assert_array_equal(table.sum(axis=0), np.bincount(predicted_categories, minlength=5))
    assert summary["zero_calcium"]["cases"] == 1
    assert summary["lesions"]["truth"] == sum(int(r["lesions"]) for r in rows)
    assert summary["lesions"]["found"] == sum(int(r["lesions_found"]) for r in rows)
    for name in ARTERIES:
        expected = sum(truth_of(phantoms / r["case"])["arteries"][name]["agatston"] for r in rows)
        assert summary["arteries"][name]["truth_agatston"] == pytest.approx(expected, abs=1e-6)

    def printed(label: str) -> str:
        line = next(x for x in result.stdout.splitlines() if x.strip().startswith(label))
        return line.split()[-1]

    t = summary["total_agatston"]
    assert "Cases: 5 (5 scored, 0 skipped)" in result.stdout
    assert printed("ICC(2,1), absolute agreement") == f"{t['icc']:.3f}"
    assert printed("ICC(2,1) on log(1 + Agatston)") == f"{t['icc_log1p']:.3f}"
    assert printed("Risk category: weighted kappa") == f"{summary['risk_category']['weighted_kappa_linear']:.3f}"
    lo, hi = t["limits_of_agreement"]
    assert f"95% limits of agreement             {lo:.1f} to {hi:.1f}" in result.stdout
    for name in ARTERIES:
        a = summary["arteries"][name]
        cells = next(x for x in result.stdout.splitlines() if x.split()[:1] == [name]).split()
        assert cells[1:] == [f"{a['icc']:.3f}", f"{a['right_artery']:.3f}", f"{a['truth_agatston']:.1f}",
                             f"{a['predicted_agatston']:.1f}"]
    z, les = summary["zero_calcium"], summary["lesions"]
    assert f"Zero calcium: {z['scored_zero']} of 1 reference-zero cases scored 0" in result.stdout
    assert f"Lesions: {les['found']} of {les['truth']} found (sensitivity {les['sensitivity']:.3f})" in result.stdout
    assert f"({summary['false_positives']['per_scan']:.2f} per scan)" in result.stdout
    # Rows of the printed table are the JSON table.
    for name, row in zip(RISK_CATEGORIES, table):
        line = next(x for x in result.stdout.splitlines() if x.split()[:1] == [name] and len(x.split()) == 6)
        assert [int(v) for v in line.split()[1:]] == row.tolist()


def test_plots_are_png_images(evaluated) -> None:
    _, out = evaluated
    for name in ("bland_altman.png", "scatter.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert 400 <= width <= 2000 and 300 <= height <= 2000
            # Something was drawn: far more than the two colours of an empty frame (antialiased marks and text).
            assert len(image.convert("RGB").getcolors(maxcolors=width * height)) > 50


def test_broken_cases_are_skipped_listed_and_exit_1(phantoms: Path, tmp_path: Path, capsys) -> None:
    cases = tmp_path / "cases"
    shutil.copytree(phantoms / f"case-{ZERO_SEED:04d}", cases / "zero")
    # A slice cut short in the middle of the series: the loader drops it and the series has a gap.
    shutil.copytree(phantoms / "case-0000", cases / "truncated")
    cut = sorted((cases / "truncated" / "dicom").iterdir())[10]
    cut.write_bytes(cut.read_bytes()[:2000])
    # The SEG of another case: it does not fit this series.
    shutil.copytree(phantoms / "case-0002", cases / "wrong-seg")
    shutil.copy(phantoms / "case-0001" / "labels.seg.dcm", cases / "wrong-seg" / "labels.seg.dcm")
    out = tmp_path / "out"
    rc = cacnode_main(["evaluate", str(cases), "--out", str(out), "--config", str(CONFIG), "--device", "cpu",
                       "--no-progress"])
    assert rc == 1
    stdout = capsys.readouterr().out
    rows = {r["case"]: r for r in read_csv(out / "cases.csv")}
    assert [rows[c]["status"] for c in ("truncated", "wrong-seg", "zero")] == ["skipped", "skipped", "scored"]
    assert "missing" in rows["truncated"]["reason"]
    assert "frame of reference differs" in rows["wrong-seg"]["reason"]
    assert rows["wrong-seg"]["series_uid"] == truth_of(phantoms / "case-0002")["series_uid"]
    assert float(rows["zero"]["truth_total"]) == 0.0
    assert "Skipped (2):" in stdout
    assert f"  truncated: {rows['truncated']['reason']}" in stdout
    assert f"  wrong-seg: {rows['wrong-seg']['reason']}" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == {"total": 3, "scored": 1, "skipped": 2}
    assert np.array(summary["risk_category"]["confusion_matrix"]).sum() == 1
    assert (out / "scatter.png").is_file() and (out / "bland_altman.png").is_file()


def test_csv_with_nifti_labels_and_an_empty_labels_cell(phantoms: Path, tmp_path: Path, capsys) -> None:
    calcified = phantoms / "case-0002"
    series = load_series(calcified / "dicom")
    labels = np.load(calcified / "labels.npy")  # ascending slices, as the loader sorts them
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ series_affine(series)  # DICOM LPS -> NIfTI RAS
    nib.save(nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), affine), tmp_path / "case-0002.nii.gz")
    listing = tmp_path / "lists" / "cases.csv"
    listing.parent.mkdir()
    relative = os.path.relpath(phantoms, listing.parent)
    listing.write_text(f"series_dir,labels\n{relative}/case-0002/dicom,../case-0002.nii.gz\n"
                       f"{relative}/case-{ZERO_SEED:04d}/dicom,\n")
    out = tmp_path / "out"
    rc = cacnode_main(["evaluate", str(listing), "--out", str(out), "--config", str(CONFIG), "--device", "cpu",
                       "--no-progress", "--json"])
    assert rc == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "summary.json").read_text())
    rows = read_csv(out / "cases.csv")
    assert [r["case"] for r in rows] == [f"{relative}/case-0002/dicom", f"{relative}/case-{ZERO_SEED:04d}/dicom"]
    assert float(rows[0]["truth_total"]) == pytest.approx(truth_of(calcified)["total"]["agatston"], abs=1e-3)
    assert float(rows[1]["truth_total"]) == 0.0
    assert printed["zero_calcium"]["cases"] == 1


def test_nothing_scored_or_output_unwritable_is_exit_2(phantoms: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = cacnode_main(["evaluate", str(phantoms), "--out", str(blocker / "out"), "--config", str(CONFIG)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"--out {blocker / 'out'}: cannot write there" in err[0]

    cases = tmp_path / "cases"
    shutil.copytree(phantoms / "case-0000" / "dicom", cases / "lost-labels" / "dicom")
    rc = cacnode_main(["evaluate", str(cases), "--out", str(tmp_path / "out"), "--config", str(CONFIG),
                       "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    error = [x for x in captured.err.splitlines() if x.startswith("cacnode evaluate: error:")]
    assert len(error) == 1 and "none of the 1 case(s) could be scored" in error[0] and "lost-labels" in error[0]
    assert re.search(r"no label file", read_csv(tmp_path / "out" / "cases.csv")[0]["reason"])
