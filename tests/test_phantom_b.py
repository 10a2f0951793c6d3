"""Phantom family B: determinism, valid DICOM, exact truth, distractors, anatomy, variety, the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cacnode.cli import main as cacnode_main
from conftest import dcmtk
from pipeline.reading.labels_io import read_labels
from pipeline.reading.loader import load_series
from pipeline.scoring.result import score_series, to_json
from pipeline.scoring.agatston import ScoringProfile
from training.phantom_b import REVISION, physics
from training.phantom_b.calcium import LABEL_MIN_RAISE_HU, Calcification, footprint
from training.phantom_b.generate import PhantomBCase, generate_case, write_case
from training.phantom_b.geometry import Grid
from training.phantom_b.params import draw_params
from training.phantom_b.scene import build_scene
from training.phantom_b.sdf import polyline_distance

CALCIUM_SEED = 4  # 101-400 in the LAD, LCX and RCA; aortic root and wall, mitral, pericardial, cartilage, node distractors
ZERO_SEED = 11  # no coronary calcium; aortic wall, costal cartilage and lung distractors


@pytest.fixture(scope="module")
def calcium_case() -> PhantomBCase:
    return generate_case(CALCIUM_SEED)


@pytest.fixture(scope="module")
def zero_case() -> PhantomBCase:
    return generate_case(ZERO_SEED)


@pytest.fixture(scope="module")
def calcium_dir(calcium_case: PhantomBCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(calcium_case, tmp_path_factory.mktemp("phantom_b"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_revision_is_set() -> None:
    assert isinstance(REVISION, int) and REVISION >= 1


def test_same_seed_same_bytes(calcium_dir: Path, tmp_path: Path) -> None:
    again = write_case(generate_case(CALCIUM_SEED), tmp_path)
    first, second = _files(calcium_dir), _files(again)
    assert {"labels.seg.dcm", "labels.npy", "truth.json"} <= first.keys()
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_case_fields_are_consistent(calcium_case: PhantomBCase) -> None:
    case = calcium_case
    assert case.hu.dtype == np.float32 and case.labels.dtype == np.uint8
    assert case.hu.shape == case.labels.shape == (case.grid.n_slices, 512, 512) == (len(case.datasets), 512, 512)
    assert len(case.file_names) == len(set(case.file_names)) == len(case.datasets)
    assert set(np.unique(case.labels)) <= {0, 1, 2, 3, 4}
    assert case.pixel_spacing_mm == (case.grid.pixel_mm,) * 2
    by_z = sorted(case.datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    for k in (0, len(by_z) // 2, len(by_z) - 1):
        ds = by_z[k]
        decoded = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(decoded, case.hu[k])
        assert float(ds.SliceThickness) == case.slice_thickness_mm
    zs = np.array([float(ds.ImagePositionPatient[2]) for ds in by_z])
    np.testing.assert_allclose(np.diff(zs), case.increment_mm)
    assert float(by_z[0].PixelSpacing[0]) == case.grid.pixel_mm  # the grid's spacing is the one written


def test_truth_json_is_the_nodes_score_of_the_written_series(calcium_dir: Path, calcium_case: PhantomBCase) -> None:
    series = load_series(calcium_dir / "dicom")
    np.testing.assert_array_equal(series.hu, calcium_case.hu)
    labels = read_labels(calcium_dir / "labels.seg.dcm", series)
    np.testing.assert_array_equal(labels, calcium_case.labels)
    np.testing.assert_array_equal(np.load(calcium_dir / "labels.npy"), calcium_case.labels)
    scored = json.loads(json.dumps(to_json(score_series(series, labels, ScoringProfile(), "labels:labels.seg.dcm"))))
    truth = json.loads((calcium_dir / "truth.json").read_text())
    assert scored == truth == calcium_case.truth
    assert truth["risk_category"] == calcium_case.params.burden.category == "101-400"
    assert sum(truth["arteries"][name]["agatston"] > 0 for name in ("LM", "LAD", "LCX", "RCA")) >= 3


def test_zero_case_scores_zero_and_writes_no_seg(zero_case: PhantomBCase, tmp_path: Path) -> None:
    case = zero_case
    assert case.params.burden.category == "0" and not case.plaques
    assert not case.labels.any()
    assert case.truth["total"] == {"agatston": 0.0, "volume_mm3": 0.0, "mass_mg": None, "lesions": 0}
    assert case.truth["risk_category"] == "0"
    # Bright voxels exist (bone, distractors), they are just not coronary.
    assert np.count_nonzero(case.hu >= 130) > 1000
    assert case.distractors and np.count_nonzero(case.hu[case.raised_by_distractor] >= 130) > 0
    folder = write_case(case, tmp_path)
    assert not (folder / "labels.seg.dcm").exists()  # a SEG needs at least one segment
    assert json.loads((folder / "truth.json").read_text()) == case.truth


def test_labels_only_where_a_plaque_raised_the_voxel(calcium_case: PhantomBCase, zero_case: PhantomBCase) -> None:
    for case in (calcium_case, zero_case):
        labelled = case.labels > 0
        assert not (labelled & ~case.raised_by_plaque).any()
        assert not (labelled & case.raised_by_distractor).any()
        assert all(d.label == 0 for d in case.distractors)
    case = calcium_case
    assert case.raised_by_distractor.any()
    assert {"aortic root", "mitral annulus", "costal cartilage"} <= {d.kind for d in case.distractors}
    # Every plaque's label is its artery's, and the labelled voxels are bright where they are scored.
    assert {p.label for p in case.plaques} == set(np.unique(case.labels)) - {0}
    assert 130 <= float(case.hu[case.labels > 0].max()) <= 2500


def test_bone_is_never_labelled(calcium_case: PhantomBCase) -> None:
    """No labelled voxel at or above 130 HU joins a large bright object (vertebra, sternum, rib)."""
    case = calcium_case
    objects, _ = ndimage.label(case.hu >= 130, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(objects.ravel())
    touched = np.unique(objects[(case.labels > 0) & (case.hu >= 130)])
    assert touched.size and touched.min() > 0
    assert sizes[touched].max() < 3000, sizes[touched].max()
    bone = case.hu >= 400
    assert np.count_nonzero(bone & (case.labels == 0)) > 10 * np.count_nonzero(bone & (case.labels > 0))


def test_plaques_sit_on_coronary_walls_on_the_heart(calcium_case: PhantomBCase) -> None:
    scene = build_scene(calcium_case.params)
    arteries = {a.name: a for a in scene.arteries}
    assert {"LAD", "LCX", "RCA", "PDA"} <= arteries.keys()
    for artery in scene.arteries:  # in the epicardial fat, against the muscle, inside the pericardium
        if artery.name == "LM":  # runs free from the aortic root, in the crease between root, atrium and ventricle
            continue
        beyond = scene.heart.myocardium(artery.points[5:]) - artery.radii[5:]
        assert np.median(np.abs(beyond - 0.6)) < 0.5, artery.name
        assert np.mean(scene.heart.sac(artery.points) < 0.5) > 0.95, artery.name
    for plaque in calcium_case.plaques:
        artery = arteries[plaque.artery]
        ends = plaque.capsules[:, :3]
        dist, nearest = polyline_distance(ends, artery.points)
        assert (dist - artery.radii[nearest]).max() < 2.0 + plaque.capsules[:, 6].max(), plaque.kind


def test_distractors_keep_clear_of_coronary_lumens(calcium_case: PhantomBCase) -> None:
    scene = build_scene(calcium_case.params)
    for d in calcium_case.distractors:
        pts = d.capsules[:, :3]
        for artery in scene.arteries:
            dist, nearest = polyline_distance(pts, artery.points)
            assert (dist - artery.radii[nearest] - d.capsules[:, 6]).min() >= 1.5 - 1e-6, (d.kind, artery.name)


def test_anatomy_is_where_it_belongs(calcium_case: PhantomBCase) -> None:
    case = calcium_case
    scene = build_scene(case.params)
    g = case.grid
    base = scene.heart.base + 0.4 * scene.heart.length * scene.heart.axes[0]  # inside the left ventricle
    k, r, c = (int(round(v)) for v in g.index(base))
    assert -20 < float(case.hu[k, r - 4 : r + 5, c - 4 : c + 5].mean()) < 120  # soft tissue (blood, muscle)
    img = case.hu[k]
    lungs = np.argwhere(img < -500)
    x = g.origin_mm[0] + g.pixel_mm * lungs[::53, 1]
    assert lungs.shape[0] > 0.1 * img.size and x.min() < base[0] - 60 and x.max() > base[0] + 40
    sx, sy, _ = scene.chest.spine
    assert base[0] > sx and base[1] < sy - 40  # the heart lies in front of the spine and to its left
    k_s, r_s, c_s = (int(round(v)) for v in g.index(np.array([sx, sy, base[2]])))
    if 0 <= r_s < 512 and 0 <= c_s < 512:
        assert float(case.hu[k_s, r_s, c_s]) > 100  # vertebral body


def test_parameters_vary_over_seeds() -> None:
    params = [draw_params(seed) for seed in range(30)]
    assert {p.tree.dominance for p in params} == {"right", "left", "co"}
    assert any(p.tree.lm_length == 0 for p in params) and any(p.tree.lm_length > 0 for p in params)
    assert any(p.tree.ramus for p in params)
    categories = {p.burden.category for p in params}
    assert "0" in categories and len(categories - {"0"}) >= 3
    assert 0.25 <= np.mean([p.burden.category == "0" for p in params]) <= 0.6
    assert len({(p.scan.thickness_mm, p.scan.increment_mm) for p in params}) >= 4
    fovs = [p.scan.fov_mm for p in params]
    assert min(fovs) < 240 and max(fovs) > 340
    assert {p.scan.kernel for p in params} == {"smooth", "standard", "sharp"}
    assert {p.scan.stored for p in params} == {"int16", "uint16"} and {p.scan.descending for p in params} == {True,
                                                                                                           False}
    assert len({p.scan.kvp for p in params}) >= 2
    noise = [p.scan.noise_hu for p in params]
    assert min(noise) < 20 and max(noise) > 40
    elevation = [p.heart.elevation for p in params]
    assert min(elevation) < 22 < 42 < max(elevation)  # horizontal and vertical hearts


def test_uids_never_meet_family_a(calcium_case: PhantomBCase) -> None:
    from training.phantom.generate import case_uid
    from training.phantom.params import draw_params as draw_a

    a_study = case_uid(draw_a(CALCIUM_SEED), "study")
    assert calcium_case.datasets[0].StudyInstanceUID != a_study
    uids = {ds.SOPInstanceUID for ds in calcium_case.datasets}
    assert case_uid(draw_a(CALCIUM_SEED), "instance", 0) not in uids


def test_kernel_blur_in_a_box_is_the_reconstruction_blur() -> None:
    """The labels are decided on exactly the blur the image gets."""
    for sigma, gain in ((0.6, 0.0), (0.32, 0.3)):
        kernel = physics.make_kernel(sigma, gain, 0.5)
        volume = np.zeros((1, 64, 64), np.float32)
        volume[0, 30:33, 31] = 1000.0
        box = kernel.blur(volume.copy())
        physics.reconstruct(volume, kernel, 0.0, np.ones((64, 64), np.float32), 1.0, 0.5, 0.0,
                            np.random.default_rng(0))
        np.testing.assert_allclose(volume, box, atol=0.05)
        assert abs(float(volume.sum()) - 3000.0) < 1.0


def test_footprint_keeps_the_volume_of_a_sphere() -> None:
    grid = Grid(30, 64, 0.4, 3.0, 1.5, (-12.8, -12.8, -20.0))
    r = 1.6
    sphere = Calcification("spot", 2, np.array([[0.1, 0.2, 0.3, 0.1, 0.2, 0.3, r]]), 400.0, np.zeros(3))
    fp = footprint(sphere, grid, 4)
    assert fp is not None
    volume = float(fp.fraction.sum()) * grid.pixel_mm**2 * grid.increment_mm
    assert volume == pytest.approx(4.0 / 3.0 * np.pi * r**3, rel=0.03)
    moving = Calcification("spot", 4, sphere.capsules, 400.0, np.array([2.0, 0.0, 0.0]))
    fm = footprint(moving, grid, 4)
    assert fm is not None and float(fm.fraction.max()) < float(fp.fraction.max())  # motion smears it
    weights = physics.ssp_weights(np.arange(5.0), np.arange(-5.0, 10.0, 0.5), 2.5)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert LABEL_MIN_RAISE_HU == 15.0


def test_cacnode_phantom_family_b_writes_the_layout(zero_case: PhantomBCase, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = cacnode_main(["phantom", str(out), "--family", "b", "--n", "1", "--seed", str(ZERO_SEED), "--workers", "1",
                       "--no-progress"])
    assert rc == 0
    folder = out / f"case-{ZERO_SEED:04d}"
    assert sorted(p.name for p in folder.iterdir()) == ["dicom", "labels.npy", "truth.json"]
    assert json.loads((folder / "truth.json").read_text()) == zero_case.truth
    assert sorted(p.name for p in (folder / "dicom").iterdir()) == sorted(zero_case.file_names)
    np.testing.assert_array_equal(np.load(folder / "labels.npy"), zero_case.labels)


def test_family_b_has_no_shifted_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cacnode_main(["phantom", str(tmp_path / "out"), "--family", "b", "--shifted", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shifted" in err[0] and "family" in err[0]
    assert not (tmp_path / "out").exists()


def test_dciodvfy_reports_no_errors(calcium_dir: Path) -> None:
    dciodvfy = dcmtk("dciodvfy")
    files = sorted((calcium_dir / "dicom").iterdir())
    for path in (files[0], files[-1], calcium_dir / "labels.seg.dcm"):
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
