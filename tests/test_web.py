"""The HTTP side without a node: status page, retry token, summary image, health and metrics."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from node_support import small_series
from PIL import Image
from starlette.testclient import TestClient

from pipeline.errors import CacnodeError
from scp.db import Database
from scp.metrics import Counters, DatabaseCollector
from scp.spool import InstanceKey
from scp.status_page import ModelIdentity, review_text
from scp.web import WebContext, make_app, read_admin_token

TOKEN = "let-me-retry"


@pytest.fixture
def failed_delivery(tmp_path: Path) -> tuple[Database, str, int]:
    """A database with one scored series whose delivery failed; its instance and summary are real files."""
    db = Database(tmp_path / "db.sqlite3")
    (ds,) = small_series(n_slices=1)
    instance = tmp_path / "instance.dcm"
    ds.save_as(instance, enforce_file_format=True)
    result_dir = tmp_path / "results" / "r1"
    result_dir.mkdir(parents=True)
    ds.save_as(result_dir / "summary.dcm", enforce_file_format=True)  # a grey image stands in for the summary
    (result_dir / "result.json").write_text(json.dumps({
        "risk_category": "I", "cac_drs": "A1",
        "uncounted_calcium": {"volume_mm3": 155.2, "components": 3, "agatston": 80.0, "bone_objects_excluded": 3,
                              "review": True, "review_text": "Calcium not attributed to a coronary artery: 155.2 mm3"}}))
    series = str(ds.SeriesInstanceUID)
    db.record_instance(InstanceKey(str(ds.StudyInstanceUID), series, str(ds.SOPInstanceUID)), None, instance, 1, 1.0)
    job_id = db.complete_series(series, 2.0)
    db.claim_job(3.0)
    db.finish_job(job_id, 4.0, result_dir=result_dir, sr_uid="1.9", total_agatston=42.25,
                  destinations=[("PACS", "127.0.0.1", 104)])
    (d,) = db.due_deliveries(4.0)
    db.delivery_attempted(d.id, 5.0, error="connection refused", next_attempt=None)
    yield db, series, job_id
    db.close()


def client(db: Database, token: str | None = TOKEN, show_phi: bool = False) -> TestClient:
    counters = Counters()
    counters.registry.register(DatabaseCollector(db))
    ctx = WebContext(db=db, counters=counters, health=lambda: (True, {"listener": "up"}),
                     model=lambda: ModelIdentity("cacnode-unet", "2.1.0", "2.25.1"), admin_token=token,
                     show_phi=show_phi)
    return TestClient(make_app(ctx), follow_redirects=False)


def test_page_shows_score_delivery_and_model_but_no_patient(failed_delivery):
    db, series, _ = failed_delivery
    page = client(db).get("/").text
    for shown in (series, "Calcium Score 3.0 mm", "42.2", "A1", "failed", "connection refused",
                  "PACS@127.0.0.1:104", "cacnode-unet 2.1.0 (UID 2.25.1)", "Retry",
                  "<td class='review'>Calcium not attributed to a coronary artery: 155.2 mm3</td>"):
        assert shown in page, shown
    assert "PHANTOM" not in page and "Patient" not in page


def test_review_flag_only_when_the_uncounted_calcium_raised_it():
    flagged = {"uncounted_calcium": {"review": True, "review_text": "look"}}
    assert review_text(flagged) == "look"
    assert review_text({"uncounted_calcium": {"review": False, "review_text": None}}) is None
    assert review_text({"uncounted_calcium": None}) is None  # not assessed
    assert review_text({}) is None  # a result written before the check, or none at all
    assert "does not count" in (review_text({"uncounted_calcium": {"review": True}}) or "")


def test_patient_only_with_log_phi(failed_delivery):
    db, _, _ = failed_delivery
    assert "PHANTOM^CAC (PHANTOM-0000)" in client(db, show_phi=True).get("/").text


def test_retry_needs_the_configured_token(failed_delivery):
    db, series, _ = failed_delivery
    assert "Retry" not in client(db, token=None).get("/").text
    assert client(db, token=None).post("/retry", data={"series_uid": series, "token": ""}).status_code == 403
    assert client(db).post("/retry", data={"series_uid": series, "token": "wrong"}).status_code == 403
    assert db.delivery_rows()[0]["state"] == "failed"
    answer = client(db).post("/retry", data={"series_uid": series, "token": TOKEN})
    assert answer.status_code == 303 and answer.headers["location"].startswith("/?notice=")
    assert db.delivery_rows()[0]["state"] == "pending"


def test_summary_png_health_and_metrics(failed_delivery):
    db, _, job_id = failed_delivery
    c = client(db)
    png = c.get(f"/summary/{job_id}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    assert c.get(f"/summary/{job_id + 1}.png").status_code == 404
    assert c.get("/health").json() == {"status": "ok", "listener": "up"}
    metrics = c.get("/metrics").text
    assert 'cacnode_deliveries{state="failed"} 1.0' in metrics


def test_admin_token_file(tmp_path):
    assert read_admin_token(None) is None
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    assert read_admin_token(tmp_path / "token") == TOKEN
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CacnodeError, match="is empty"):
        read_admin_token(tmp_path / "empty")
