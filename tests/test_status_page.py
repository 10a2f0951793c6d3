"""The status page in a real browser: a real node, dcmtk storescu and storescp, headless Chromium.

Chromium is Debian's ``chromium``; puppeteer-core comes from ``npm ci`` in
tests/browser.  Without either the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_support import BROWSER_TESTS, chromium
from conftest import free_port
from dicom_sr.reader import read_sr_scores
from node_support import (
    DcmtkStoreSCP,
    NodeProcess,
    small_series,
    storescu,
    wait_for,
    write_node_config,
    write_series,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]

TOKEN = "s3cret-admin-token"


def browse(url: str, series_uid: str, state: str, screenshot: Path, token: str | None = None) -> dict:
    """Run tests/browser/status_page.mjs: wait in Chromium until the page shows the delivery in ``state``."""
    args = [shutil.which("node"), str(BROWSER_TESTS / "status_page.mjs"), url, series_uid, state, str(screenshot)]
    result = subprocess.run([*args, *([token] if token else [])], check=False, capture_output=True, text=True, timeout=150,
                            cwd=BROWSER_TESTS, env={**os.environ, "CHROMIUM": chromium()})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def http(url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_page_shows_scores_and_deliveries_and_retries_a_failed_one(tmp_path):
    chromium()
    port, web_port = free_port(), free_port()
    pacs = DcmtkStoreSCP(tmp_path / "pacs").start()
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = write_node_config(
        tmp_path / "config.toml", port=port, storage=tmp_path / "var",
        weights=Path(__file__).parent.parent / "models" / "cacnode-v1.pt",
        destinations=[("PACS", pacs.port)],
        scp={"metrics_port": web_port, "admin_token_file": tmp_path / "token",
             "retry_max_attempts": 2, "retry_backoff_seconds": 0.2},
    )
    node = NodeProcess(config, port, tmp_path / "node.log").start()
    url = f"http://127.0.0.1:{web_port}/"
    try:
        first = small_series()
        localizer = small_series(n_slices=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1,
                                 description="Scout")
        sent = storescu(port, [*write_series(first, tmp_path / "a"), *write_series(localizer, tmp_path / "loc")])
        assert sent.returncode == 0, sent.stderr
        uid = str(first[0].SeriesInstanceUID)
        seen = browse(url, uid, "sent", tmp_path / "sent.png")
        # series row: arrival, UID, description, instances, state, Agatston, risk category, CAC-DRS, review,
        # summary, reason
        assert seen["series"][1:5] == [uid, "Calcium Score 3.0 mm", "24", "sent"]
        agatston, risk, cac_drs, review = seen["series"][5:9]
        assert float(agatston) >= 0 and risk != "-" and re.fullmatch(r"A\d[A-Z0-9/]*", cac_drs), seen["series"]
        assert review == "-" or review.startswith("Calcium not attributed to a coronary artery"), review
        # the page shows what the report that reached the PACS says
        reported = read_sr_scores(next(f for f in pacs.files() if f.name.startswith("SR")))
        assert (agatston, risk, cac_drs) == (f"{reported['total']['agatston']:.1f}", reported["risk_category"],
                                             reported["cac_drs"]), reported
        assert seen["summary"] and min(seen["summary"]) > 0  # the summary image decodes in the browser
        assert seen["delivery"][1] == f"PACS@127.0.0.1:{pacs.port}" and seen["delivery"][3] == "1"
        assert seen["model"].startswith("cacnode") and "UID" in seen["model"]
        assert seen["retryButtons"] == 0  # nothing failed yet
        skipped = wait_for(lambda: node.series_state(str(localizer[0].SeriesInstanceUID)) == "skipped", 60, "skip")
        assert skipped

        pacs.stop()
        second = small_series(series_number=3, description="Calcium Score 3.0 mm B")
        sent = storescu(port, write_series(second, tmp_path / "b"))
        assert sent.returncode == 0, sent.stderr
        uid2 = str(second[0].SeriesInstanceUID)
        failed = browse(url, uid2, "failed", tmp_path / "failed.png")
        assert failed["delivery"][3] == "2" and failed["delivery"][4] not in ("", "-")  # attempts, last error
        assert failed["series"][4] == "failed"
        assert failed["retryButtons"] == 1
        assert http(url + "retry", b"series_uid=" + uid2.encode() + b"&token=wrong") == 403

        pacs.start()
        retried = browse(url, uid2, "sent", tmp_path / "screenshot.png", token=TOKEN)
        assert retried["notice"] == "1 failed delivery queued again"
        assert retried["series"][4] == "sent"
        assert (tmp_path / "screenshot.png").stat().st_size > 0
        assert len([f for f in pacs.files() if f.name.startswith("SR")]) == 2  # one SR per series reached the PACS
        with urllib.request.urlopen(url, timeout=10) as r:
            page = r.read().decode()
        assert "PHANTOM" not in page  # no patient name or ID without scp.log_phi
        with urllib.request.urlopen(url + "metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'cacnode_failures_total{kind="delivery"} 1.0' in metrics
        assert "cacnode_report_to_delivery_seconds_count 2.0" in metrics
        assert "cacnode_series_to_report_seconds_count 2.0" in metrics
        assert "process_resident_memory_bytes" in metrics
    finally:
        node.stop()
        pacs.stop()


def test_without_a_token_the_page_is_read_only(tmp_path):
    port, web_port = free_port(), free_port()
    config = write_node_config(
        tmp_path / "config.toml", port=port, storage=tmp_path / "var",
        weights=Path(__file__).parent.parent / "models" / "cacnode-v1.pt",
        scp={"metrics_port": web_port},
    )
    node = NodeProcess(config, port, tmp_path / "node.log").start()
    try:
        url = f"http://127.0.0.1:{web_port}"
        assert http(url + "/retry", b"series_uid=1.2.3&token=") == 403
        with urllib.request.urlopen(url + "/", timeout=10) as r:
            page = r.read().decode()
        assert "cacnode status" in page and "Retry" not in page and "Patient" not in page
        assert http(url + "/summary/99.png") == 404
    finally:
        node.stop()
