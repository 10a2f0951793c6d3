"""Eligibility rules on headers only: each rule, alone, gives its reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from pipeline.reading.eligibility import EligibilityRules, eligibility_reasons
from tests.conftest import simple_hu_volume
from training.phantom.ct_writer import CTHeader, build_ct_datasets

RULES = EligibilityRules()


def headers(n_slices: int = 24, thickness: float = 3.0, **header) -> list[pydicom.Dataset]:
    datasets = build_ct_datasets(
        simple_hu_volume(n_slices=n_slices, size=8),
        pixel_spacing_mm=(0.7, 0.7),
        slice_thickness_mm=thickness,
        increment_mm=thickness,
        header=CTHeader(**header),
    )
    for ds in datasets:
        del ds.PixelData  # the rules must work without pixel data
    return datasets


def test_calcium_series_is_eligible():
    assert eligibility_reasons(headers(), RULES) == ()


def test_not_ct():
    datasets = headers()
    for ds in datasets:
        ds.Modality = "MR"
    assert eligibility_reasons(datasets, RULES) == ("modality MR is not CT",)


@pytest.mark.parametrize(
    ("image_type", "reason"),
    [
        (("ORIGINAL", "PRIMARY", "LOCALIZER"), "image type LOCALIZER is never scored"),
        (("DERIVED", "SECONDARY", "SCREEN SAVE"), "image type SCREEN SAVE/SECONDARY is never scored"),
        (("ORIGINAL", "PRIMARY", "DOSE_INFO"), "image type DOSE_INFO is never scored"),
    ],
)
def test_localizers_and_dose_screens_are_not_candidates(image_type, reason):
    assert reason in eligibility_reasons(headers(image_type=image_type), RULES)


def test_derived_is_not_original():
    reasons = eligibility_reasons(headers(image_type=("DERIVED", "PRIMARY", "AXIAL")), RULES)
    assert reasons == ("image type is not ORIGINAL",)
    lenient = dataclasses.replace(RULES, require_original=False)
    assert eligibility_reasons(headers(image_type=("DERIVED", "PRIMARY", "AXIAL")), lenient) == ()


@pytest.mark.parametrize(
    ("thickness", "eligible"), [(1.0, False), (2.0, True), (2.5, True), (3.0, True), (3.5, True), (5.0, False)]
)
def test_thickness_range(thickness, eligible):
    reasons = eligibility_reasons(headers(thickness=thickness), RULES)
    if eligible:
        assert reasons == ()
    else:
        assert reasons == (f"slice thickness {thickness:g} mm is outside 2-3.5 mm",)


def test_missing_thickness():
    datasets = headers()
    del datasets[0].SliceThickness
    assert eligibility_reasons(datasets, RULES) == ("slice thickness is not in the header",)


def test_minimum_slice_count():
    assert eligibility_reasons(headers(n_slices=19), RULES) == ("19 slices, fewer than 20",)
    assert eligibility_reasons(headers(n_slices=20), RULES) == ()


@pytest.mark.parametrize(("degrees", "eligible"), [(0.0, True), (4.9, True), (5.5, False), (30.0, False)])
def test_obliquity(degrees, eligible):
    datasets = headers()
    t = np.radians(degrees)
    for ds in datasets:
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t))]
    reasons = eligibility_reasons(datasets, RULES)
    if eligible:
        assert reasons == ()
    else:
        assert reasons == (f"slices are oblique, {degrees:.1f} degrees from axial (at most 5)",)
    assert eligibility_reasons(datasets, dataclasses.replace(RULES, require_axial=False)) == ()


def test_coronal_and_sagittal():
    coronal, sagittal = headers(), headers()
    for ds in coronal:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    for ds in sagittal:
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    assert eligibility_reasons(coronal, RULES) == ("slices are coronal, not axial",)
    assert eligibility_reasons(sagittal, RULES) == ("slices are sagittal, not axial",)


def test_several_failures_give_several_reasons():
    datasets = headers(n_slices=3, thickness=1.0, image_type=("DERIVED", "SECONDARY", "LOCALIZER"))
    reasons = eligibility_reasons(datasets, RULES)
    assert reasons == (
        "image type LOCALIZER/SECONDARY is never scored",
        "image type is not ORIGINAL",
        "slice thickness 1 mm is outside 2-3.5 mm",
        "3 slices, fewer than 20",
    )


def test_no_headers():
    assert eligibility_reasons([], RULES) == ("no images",)


def test_rules_match_config_section():
    import tomllib
    from pathlib import Path

    from cacnode.settings import from_table

    doc = tomllib.loads((Path(__file__).parent.parent / "config.toml").read_text())
    assert from_table(EligibilityRules, doc["eligibility"], "eligibility") == EligibilityRules()
