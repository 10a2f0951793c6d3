"""The whole node against real peers: series in from dcmtk storescu or Orthanc, SR/SEG/summary out to the PACS.

One node for the module, delivering to two PACS at once: a dcmtk storescp
and Orthanc (which also sends a series to the node).
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from node_support import (
    DcmtkStoreSCP,
    NodeProcess,
    OrthancPeer,
    cacnode,
    node_weights,
    small_series,
    storescu,
    wait_for,
    write_node_config,
    write_series,
)

from conftest import free_port

__all__ = ["node_weights"]

pytestmark = [pytest.mark.network, pytest.mark.slow]

REPORT_MODALITIES = {"SR", "SEG", "OT"}  # the summary is a Secondary Capture, modality OT


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory, node_weights: Path):
    root = tmp_path_factory.mktemp("e2e")
    pacs = DcmtkStoreSCP(root / "pacs").start()
    port = free_port()
    orthanc = OrthancPeer(root / "orthanc", modalities={"cacnode": ("CACNODE", port)}).start()
    config = write_node_config(
        root / "config.toml", port=port, storage=root / "var", weights=node_weights,
        destinations=[("PACS", pacs.port), ("ORTHANC", orthanc.dicom_port)], quiet_seconds=1.0,
    )
    node = NodeProcess(config, port, root / "node.log").start()
    yield node, pacs, orthanc
    try:
        assert node.stop() == 0, node.log()
    finally:
        pacs.stop()
        orthanc.stop()


def arrived(pacs: DcmtkStoreSCP, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """Objects of one study at the dcmtk PACS, by modality."""
    out: dict[str, list[pydicom.Dataset]] = {}
    for path in pacs.files():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.StudyInstanceUID == study_uid:
            out.setdefault(str(ds.Modality), []).append(ds)
    return out


def wait_for_report(pacs: DcmtkStoreSCP, study_uid: str, timeout: float = 120) -> dict[str, list[pydicom.Dataset]]:
    return wait_for(lambda: (got := arrived(pacs, study_uid)) and REPORT_MODALITIES <= set(got) and got,
                    timeout, f"SR, SEG and summary of study {study_uid} at the PACS")


def test_phantom_via_storescu_report_at_pacs_equals_cacnode_score(peers, tmp_path):
    from dicom_sr.reader import read_sr_scores
    from training.phantom.generate import generate_case
    from training.phantom.ct_writer import write_datasets

    node, pacs, _ = peers
    case = generate_case(seed=11)
    folder = tmp_path / "phantom"
    write_datasets(case.datasets, folder, case.file_names)
    result = storescu(node.port, [folder])
    assert result.returncode == 0, result.stderr
    study_uid = str(case.datasets[0].StudyInstanceUID)
    got = wait_for_report(pacs, study_uid)
    (sr_header,) = got["SR"]
    sr = next(pydicom.dcmread(p) for p in pacs.files() if p.name.endswith(str(sr_header.SOPInstanceUID)))
    scored = cacnode("score", str(folder), "--json", "--config", str(node.config))
    assert scored.returncode == 0, scored.stderr
    expected = json.loads(scored.stdout)
    from_sr = read_sr_scores(sr)
    assert from_sr["risk_category"] == expected["risk_category"]
    assert from_sr["cac_drs"] == expected["cac_drs"]
    for part in ["total", *expected["arteries"]]:
        want = expected["total"] if part == "total" else expected["arteries"][part]
        have = from_sr["total"] if part == "total" else from_sr["arteries"][part]
        assert have["lesions"] == want["lesions"], part
        assert have["agatston"] == pytest.approx(want["agatston"], rel=1e-6, abs=1e-6), part
        assert have["volume_mm3"] == pytest.approx(want["volume_mm3"], rel=1e-6, abs=1e-6), part
    # the result is also kept locally: SR and JSON
    results = list((node.config.parent / "var" / "results" / study_uid).glob("*/*/result.json"))
    assert len(results) == 1 and (results[0].parent / "sr.dcm").is_file()
    assert json.loads(results[0].read_text())["total"]["agatston"] == pytest.approx(expected["total"]["agatston"])


def calcified_phantom(seed: int) -> list[pydicom.Dataset]:
    """A phantom series in which the bundled model finds calcium, so a SEG is part of the report.

    Each test takes its own seed: the node does no new work for a series it has already scored.
    """
    from training.phantom.generate import generate_case

    return generate_case(seed=seed).datasets


def test_study_with_localizer_and_thin_series_scores_only_the_eligible_one(peers, tmp_path):
    node, pacs, _ = peers
    scoring = calcified_phantom(7)
    study_uid = str(scoring[0].StudyInstanceUID)
    localizer = small_series(n_slices=2, study_uid=study_uid, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                             series_number=1, description="Topogram")
    thin = small_series(study_uid=study_uid, thickness_mm=0.6, series_number=3, description="CTA 0.6 mm")
    for name, datasets in (("scoring", scoring), ("localizer", localizer), ("thin", thin)):
        write_series(datasets, tmp_path / "study" / name)
    result = storescu(node.port, [tmp_path / "study"])
    assert result.returncode == 0, result.stderr
    got = wait_for_report(pacs, study_uid)
    uids = {name: str(ds[0].SeriesInstanceUID) for name, ds in
            (("scoring", scoring), ("localizer", localizer), ("thin", thin))}
    rows = wait_for(
        lambda: (r := {row["series_uid"]: row for row in node.status()["series"]})
        and all(r.get(u, {}).get("state") in ("sent", "skipped", "failed") for u in uids.values()) and r,
        60, "all three series to be decided",
    )
    assert rows[uids["scoring"]]["state"] == "sent"
    assert rows[uids["localizer"]]["state"] == "skipped" and rows[uids["localizer"]]["reason"]
    assert rows[uids["thin"]]["state"] == "skipped" and "thick" in rows[uids["thin"]]["reason"].lower()
    assert len(got["SR"]) == 1
    sr = got["SR"][0]
    referenced = {str(s.SeriesInstanceUID) for item in sr.CurrentRequestedProcedureEvidenceSequence
                  for s in item.ReferencedSeriesSequence}
    assert uids["scoring"] in referenced and not referenced & {uids["localizer"], uids["thin"]}


def test_orthanc_sends_a_series_and_gets_the_report_in_the_same_study(peers, tmp_path):
    node, _, orthanc = peers
    datasets = calcified_phantom(5)
    files = write_series(datasets, tmp_path / "series")
    uploaded = orthanc.upload(files)
    study_id, series_id = uploaded[0]["ParentStudy"], uploaded[0]["ParentSeries"]
    job = orthanc.rest("POST", "/modalities/cacnode/store", {"Resources": [series_id], "Synchronous": True})
    assert job is not None
    modalities = wait_for(
        lambda: (m := {orthanc.rest("GET", f"/series/{s}")["MainDicomTags"].get("Modality")
                       for s in orthanc.rest("GET", f"/studies/{study_id}")["Series"]})
        and REPORT_MODALITIES <= m and m,
        120, "SR, SEG and summary in Orthanc's study",
    )
    assert modalities == {"CT"} | REPORT_MODALITIES
