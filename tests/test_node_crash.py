"""kill -9 of the node mid-series and mid-processing: after a restart nothing acknowledged is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from node_support import (
    DcmtkStoreSCP,
    NodeProcess,
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


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> DcmtkStoreSCP:
    p = DcmtkStoreSCP(tmp_path_factory.mktemp("pacs")).start()
    yield p
    p.stop()


@pytest.fixture
def node(tmp_path: Path, pacs: DcmtkStoreSCP, node_weights: Path) -> NodeProcess:
    port = free_port()
    config = write_node_config(tmp_path / "config.toml", port=port, storage=tmp_path / "var", weights=node_weights,
                               destinations=[("PACS", pacs.port)], quiet_seconds=1.0)
    n = NodeProcess(config, port, tmp_path / "node.log")
    yield n
    if n.proc is not None and n.proc.poll() is None:
        n.stop()


def sr_of_study(pacs: DcmtkStoreSCP, study_uid: str) -> list[pydicom.Dataset]:
    out = []
    for path in pacs.files():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.StudyInstanceUID == study_uid and ds.Modality == "SR":
            out.append(ds)
    return out


def result_json(node: NodeProcess, study_uid: str) -> list[dict]:
    found = (node.config.parent / "var" / "results" / study_uid).glob("*/*/result.json")
    return [json.loads(p.read_text()) for p in found]


def test_kill_mid_series_then_restart_loses_nothing_acknowledged(node, pacs, tmp_path):
    datasets = small_series()
    files = write_series(datasets, tmp_path / "series")
    study_uid, series_uid = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    node.start()
    first, rest = files[:12], files[12:]
    assert storescu(node.port, first).returncode == 0
    node.kill()  # before the quiet period ends: the series is still open
    node.start()
    assert node.status()["counts"]["instances"]["total"] == len(first)
    assert storescu(node.port, rest).returncode == 0
    # the first half may already have been scored after the restart's quiet period; the rest
    # re-opens the series and a newer report supersedes that one
    wait_for(lambda: any(r["acquisition"]["n_slices"] == len(files) for r in result_json(node, study_uid)),
             120, "a report on all slices")
    wait_for(lambda: node.series_state(series_uid) == "sent", 60, "the series to be sent")
    assert node.status()["counts"]["instances"]["total"] == len(files)
    srs = sr_of_study(pacs, study_uid)
    assert srs and len(srs) == len(result_json(node, study_uid))


def test_kill_mid_processing_then_restart_reports_once(node, pacs, tmp_path):
    datasets = small_series()
    write_series(datasets, tmp_path / "series")
    study_uid, series_uid = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    node.start()
    assert storescu(node.port, [tmp_path / "series"]).returncode == 0
    # catch the job while it runs (or, on a fast machine, just queued): not yet reported
    wait_for(lambda: node.series_state(series_uid) in ("complete", "running"), 60, "the job to be taken")
    node.kill()
    assert sr_of_study(pacs, study_uid) == []
    node.start()
    wait_for(lambda: sr_of_study(pacs, study_uid), 120, "the SR after the restart")
    wait_for(lambda: node.series_state(series_uid) == "sent", 30, "the series to be sent")
    assert len(sr_of_study(pacs, study_uid)) == 1
    assert "re-queued" in node.log() or "job" in node.log()
