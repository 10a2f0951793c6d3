"""``cacnode score SERIES --labels FILE`` reproduces scores computed by hand (calcium-scoring.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_sr.seg import build_lesion_seg
from pipeline.model.identity import REFERENCE_LABELS
from pipeline.reading.labels_io import series_affine
from pipeline.reading.loader import load_series
from training.phantom.ct_writer import CTHeader, build_ct_datasets, write_datasets

ROOT = Path(__file__).resolve().parent.parent
SPACING = (0.5, 0.5)  # one pixel is 0.25 mm2
INCREMENT = 2.5  # scores are multiplied by 2.5 / 3


def constructed_case() -> tuple[np.ndarray, np.ndarray]:
    """30 slices of 48x48 at 40 HU with calcium of known size and HU, and its labels.

    Labels cover a box one pixel wider than each lesion, so the 40 HU rim must not count.
    """
    hu = np.full((30, 48, 48), 40.0, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    # LAD, slice 10: 4x4 px at 250 HU with one pixel at 399 -> peak 399, weight 3.
    #   area 16 x 0.25 = 4 mm2 -> 4 x 3 = 12.
    hu[10, 10:14, 10:14] = 250.0
    hu[10, 12, 12] = 399.0
    # LAD, slice 11, right above: 4x4 px at 450 HU -> weight 4, 4 mm2 -> 16.  Same 3-D lesion.
    hu[11, 10:14, 10:14] = 450.0
    labels[10:12, 9:15, 9:15] = 2
    # RCA, slice 20: 2x2 px at 180 HU -> exactly 1.0 mm2 (kept), weight 1 -> 1.
    hu[20, 30:32, 30:32] = 180.0
    labels[20, 29:33, 29:33] = 4
    # RCA, slice 20: 6x2 px at 320 HU -> 3 mm2, weight 3 -> 9.
    hu[20, 36:42, 10:12] = 320.0
    labels[20, 35:43, 9:13] = 4
    # RCA, slice 20: 1x3 px at 500 HU -> 0.75 mm2 < 1 mm2, dropped.
    hu[20, 5, 40:43] = 500.0
    labels[20, 4:7, 39:44] = 4
    # LCX, slice 5: 3x3 px at 129 HU -> below 130, nothing.
    hu[5, 20:23, 20:23] = 129.0
    labels[5, 19:24, 19:24] = 3
    # Calcium outside any label (bone, say) never counts.
    hu[25, 0:5, 0:5] = 900.0
    return hu, labels


# Raw sums: LAD 12 + 16 = 28, RCA 1 + 9 = 10, total 38; each times 2.5 / 3.
LAD = 28 * 2.5 / 3  # 23.333...
RCA = 10 * 2.5 / 3  # 8.333...
TOTAL = 38 * 2.5 / 3  # 31.666... -> risk 11-100, CAC-DRS A1 with 2 vessels
# Volume = counted voxels x 0.25 mm2 x 2.5 mm: LAD 32 voxels, RCA 4 + 12 = 16 (the dropped 3 excluded).
LAD_VOLUME, RCA_VOLUME = 32 * 0.625, 16 * 0.625


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, np.ndarray]:
    hu, labels = constructed_case()
    datasets = build_ct_datasets(
        hu, pixel_spacing_mm=SPACING, slice_thickness_mm=2.5, increment_mm=INCREMENT, header=CTHeader(), descending=True
    )
    write_datasets(datasets, tmp_path / "series")
    return tmp_path / "series", labels


def cacnode(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The checkout on PYTHONPATH too, so the test runs the code under test even where the
    # editable install points elsewhere.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "cacnode.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)


def check_scores(out: dict) -> None:
    assert out["arteries"]["LAD"]["agatston"] == pytest.approx(LAD, rel=1e-12)
    assert out["arteries"]["RCA"]["agatston"] == pytest.approx(RCA, rel=1e-12)
    assert out["arteries"]["LM"]["agatston"] == 0
    assert out["arteries"]["LCX"]["agatston"] == 0
    assert out["total"]["agatston"] == pytest.approx(TOTAL, rel=1e-12)
    assert out["arteries"]["LAD"]["volume_mm3"] == pytest.approx(LAD_VOLUME, rel=1e-12)
    assert out["arteries"]["RCA"]["volume_mm3"] == pytest.approx(RCA_VOLUME, rel=1e-12)
    assert out["total"]["volume_mm3"] == pytest.approx(LAD_VOLUME + RCA_VOLUME, rel=1e-12)
    assert [out["arteries"][a]["lesions"] for a in ("LM", "LAD", "LCX", "RCA")] == [0, 1, 0, 2]
    assert out["total"]["lesions"] == 3
    assert out["total"]["mass_mg"] is None  # no calibration configured
    assert out["risk_category"] == "11-100"
    assert out["cac_drs"] == "A1/N2"
    assert out["flags"] == []  # 120 kVp, 2.5 mm, gated, no contrast
    assert out["acquisition"] == {
        "kvp": 120.0,
        "slice_thickness_mm": 2.5,
        "increment_mm": 2.5,
        "pixel_spacing_mm": [0.5, 0.5],
        "n_slices": 30,
    }
    assert out["profile"]["name"] == "agatston-1990"
    # The unlabelled 900 HU spot (25 px on one slice) is the only calcium no artery counts: shown,
    # not flagged (15.6 mm3 is under the 30 mm3 counted).  No lungs: the crop is the whole image.
    assert out["uncounted_calcium"] == {
        "volume_mm3": pytest.approx(25 * 0.625, rel=1e-12),
        "components": 1,
        "agatston": pytest.approx(25 * 0.25 * 4 * 2.5 / 3, rel=1e-12),
        "bone_objects_excluded": 0,
        "review": False,
        "review_text": None,
    }


def test_score_with_seg_labels(case, tmp_path):
    folder, labels = case
    series = load_series(folder)
    seg = build_lesion_seg(labels, series.datasets, REFERENCE_LABELS, series_number=90, series_description="truth")
    seg.save_as(tmp_path / "labels.seg.dcm", enforce_file_format=True)
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "labels.seg.dcm"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["series_uid"] == series.series_uid
    assert out["labels_source"] == "labels:labels.seg.dcm"
    check_scores(out)


def test_score_with_nifti_labels_in_ras(case, tmp_path):
    folder, labels = case
    series = load_series(folder)
    image = nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), np.diag([-1.0, -1.0, 1.0, 1.0]) @ series_affine(series))
    nib.save(nib.as_closest_canonical(image), tmp_path / "labels.nii.gz")
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "labels.nii.gz"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_scores(json.loads(result.stdout))


def test_score_table(case, tmp_path):
    folder, labels = case
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ series_affine(load_series(folder))
    image = nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), affine)
    nib.save(image, tmp_path / "labels.nii")
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "labels.nii"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Risk category: 11-100    CAC-DRS: A1/N2" in result.stdout
    assert any(line.startswith("Total") and "31.7" in line for line in result.stdout.splitlines())


def test_labels_that_do_not_fit_are_one_line(case, tmp_path):
    folder, labels = case
    image = nib.Nifti1Image(np.transpose(labels[:-1], (2, 1, 0)), np.eye(4))
    nib.save(image, tmp_path / "short.nii.gz")
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "short.nii.gz"), "--json", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cacnode score: error: short.nii.gz:"), result.stderr
    assert result.stdout == ""


def test_broken_series_is_one_line(case, tmp_path):
    folder, _ = case
    # An inner slice by position: file names are random, and losing an end slice opens no gap.
    by_position = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_position[len(by_position) // 2].unlink()
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "x.nii.gz"), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "slice(s) missing" in lines[0], result.stderr


def test_folder_with_several_series_names_the_option_that_chooses(case, tmp_path):
    folder, _ = case
    hu, _ = constructed_case()
    other = build_ct_datasets(hu[:12], pixel_spacing_mm=SPACING, slice_thickness_mm=2.5, increment_mm=INCREMENT,
                              header=CTHeader())  # fmt: skip
    write_datasets(other, folder / "other")
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "x.nii.gz"), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "holds 2 series; choose one with --series-uid: " in lines[0]
    assert str(other[0].SeriesInstanceUID) in lines[0]


def test_seg_of_a_series_without_calcium_is_not_written_and_logged_once(tmp_path):
    datasets = build_ct_datasets(np.full((30, 48, 48), 40.0, dtype=np.float32), pixel_spacing_mm=SPACING,
                                 slice_thickness_mm=2.5, increment_mm=INCREMENT, header=CTHeader())  # fmt: skip
    folder = tmp_path / "series"
    write_datasets(datasets, folder)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ series_affine(load_series(folder))
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 30), dtype=np.uint8), affine), tmp_path / "none.nii.gz")
    seg = tmp_path / "seg.dcm"
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "none.nii.gz"), "--seg", str(seg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not seg.exists()
    mentions = [line for line in result.stderr.splitlines() if "SEG" in line]
    assert len(mentions) == 1, result.stderr
    assert mentions[0].endswith(f"no SEG written to {seg}: no artery has calcium")


def test_zero_score_with_calcium_in_the_heart_crop_is_flagged_and_shown(case, tmp_path):
    """Never a silent zero: without labels the score is 0, and the calcium is in the JSON, table, SEG, summary."""
    folder, _ = case
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ series_affine(load_series(folder))
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 30), dtype=np.uint8), affine), tmp_path / "none.nii.gz")
    seg, summary = tmp_path / "seg.dcm", tmp_path / "summary.dcm"
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "none.nii.gz"), "--json", "--seg", str(seg),
                     "--summary", str(summary), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["total"]["agatston"] == 0 and out["risk_category"] == "0"
    uncounted = out["uncounted_calcium"]
    # LAD 32 + RCA 4 + 12 + the 900 HU spot 25 voxels of 0.625 mm3 (the 0.75 mm2 and 129 HU ones do not count).
    assert uncounted["volume_mm3"] == pytest.approx(73 * 0.625, rel=1e-12)
    assert uncounted["agatston"] == pytest.approx((28 + 10 + 25) * 2.5 / 3, rel=1e-12)
    assert uncounted["components"] == 4
    assert uncounted["review"] is True and "not attributed to a coronary artery" in uncounted["review_text"]
    written = pydicom.dcmread(seg)
    assert [str(s.SegmentLabel) for s in written.SegmentSequence] == ["Calcium not attributed to a coronary artery"]
    assert pydicom.dcmread(summary).Columns == 1600
    table = cacnode("score", str(folder), "--labels", str(tmp_path / "none.nii.gz"), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "Not attributed to an artery (not counted): 45.6 mm3 in 4 object(s)" in table.stdout
    assert "REVIEW: look at the images" in table.stdout


def test_report_of_reference_labels_is_not_coded_as_ai_output(case, tmp_path):
    """report.md: a report made from reference labels says so and names where they came from."""
    folder, labels = case
    series = load_series(folder)
    annotation = build_lesion_seg(labels, series.datasets, REFERENCE_LABELS, series_number=90,
                                  series_description="truth")  # fmt: skip
    annotation.save_as(tmp_path / "labels.seg.dcm", enforce_file_format=True)
    sr_path, seg_path = tmp_path / "sr.dcm", tmp_path / "seg.dcm"
    result = cacnode("score", str(folder), "--labels", str(tmp_path / "labels.seg.dcm"), "--sr", str(sr_path),
                     "--seg", str(seg_path), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    sr, seg = pydicom.dcmread(sr_path), pydicom.dcmread(seg_path)
    concepts = {str(item.CodeValue) for e in sr.iterall() if e.keyword == "ConceptCodeSequence" for item in e.value}
    assert "123110" not in concepts  # Algorithm Family "Artificial Intelligence"
    assert "123109" in concepts  # Algorithm Family "Manual Processing"
    texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any("reference annotation" in t and annotation.SOPInstanceUID in t and "labels.seg.dcm" in t
               for t in texts), texts  # fmt: skip
    from pipeline.scoring.uncounted import DESCRIPTION as UNCOUNTED

    arteries = [segment for segment in seg.SegmentSequence if segment.SegmentLabel != UNCOUNTED]
    assert arteries
    for segment in arteries:  # the annotation's: manual
        assert segment.SegmentAlgorithmType == "MANUAL"
        assert "SegmentAlgorithmName" not in segment and "SegmentationAlgorithmIdentificationSequence" not in segment
    for segment in seg.SegmentSequence:  # the calcium no artery counts is found by the node: automatic, not AI
        if segment.SegmentLabel == UNCOUNTED:
            assert segment.SegmentAlgorithmType == "AUTOMATIC"
            family = segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
            assert family.CodeValue == "123101"
