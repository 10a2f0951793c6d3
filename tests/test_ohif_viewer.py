"""The radiologist's view: our SR and SEG opened in the OHIF viewer, in headless Chromium.

Orthanc with its DICOMweb plugin is the PACS.  A calcified phantom goes to
Orthanc (the CT, by storescu) and to a running node, whose reports go to the
same Orthanc by C-STORE.  OHIF's prebuilt ``dist/`` (``@ohif/app`` from the
npm registry, unpacked into tests/browser/ohif by ``.ci/run``) is served from
127.0.0.1 by :class:`ViewerServer`, which also passes ``/dicom-web`` on to
Orthanc, so the viewer and its data share one origin and no CORS is needed.
The bundled ``app-config.js`` is replaced by one pointing at that proxy.

Skipped, with the reason, when chromium, node, puppeteer-core, OHIF's dist or
Orthanc's DICOMweb plugin are missing.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from browser_support import BROWSER_TESTS, chromium
from conftest import free_port
from node_support import (
    NodeProcess,
    OrthancPeer,
    node_weights,
    storescu,
    wait_for,
    write_node_config,
)

__all__ = ["node_weights"]

pytestmark = [pytest.mark.network, pytest.mark.slow]

OHIF_DIST = BROWSER_TESTS / "ohif" / "dist"
SEED = 11  # a family-a phantom with calcium in the LAD, LCX and RCA

# OHIF's configuration: one DICOMweb data source, Orthanc behind the same origin.
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""

# Console errors that do not come from our objects, and why they are left out.
UNRELATED_ERRORS = {
    "favicon": "the static server has no favicon.ico",
    "service-worker": "OHIF registers a service worker that is not part of the test",
    "sw.js": "OHIF's service worker script",
    "init-service-worker": "OHIF's service worker bootstrap",
    "manifest.json": "the web app manifest is not part of the viewer",
    "WebGL": "headless Chromium renders WebGL with SwiftShader and warns about it",
    "GPU stall": "SwiftShader performance notice",
    "i18n": "OHIF's translations for the browser's locale",
    "locales/": "OHIF's translations for the browser's locale",
}


def require_browser() -> str:
    """Chromium's path, or a skip naming what is missing."""
    found = chromium()
    if not (OHIF_DIST / "index.html").is_file():
        pytest.skip(f"OHIF's prebuilt viewer is not in {OHIF_DIST} (see .ci/run: npm pack @ohif/app)")
    return found


class ViewerServer:
    """OHIF's static files on 127.0.0.1, ``app-config.js`` replaced, ``/dicom-web`` passed to Orthanc.

    Unknown paths get ``index.html``: OHIF is a single-page app and routes
    ``/viewer`` itself.
    """

    def __init__(self, dist: Path, app_config: str, orthanc_url: str) -> None:
        dist_root, config, upstream = dist.resolve(), app_config.encode(), orthanc_url

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(dist_root), **kwargs)

            def log_message(self, format: str, *args) -> None:
                pass

            def end_headers(self) -> None:
                # cross-origin isolation lets Cornerstone's decoders use SharedArrayBuffer
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                super().end_headers()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    return self._proxy()
                if path == "/app-config.js":
                    return self._send(config, "application/javascript")
                local = dist_root / path.lstrip("/")
                if path != "/" and local.resolve().is_file() and local.resolve().is_relative_to(dist_root):
                    return super().do_GET()
                return self._send((dist_root / "index.html").read_bytes(), "text/html")

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _proxy(self) -> None:
                request = urllib.request.Request(upstream + self.path)
                if "Accept" in self.headers:
                    request.add_header("Accept", self.headers["Accept"])
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, headers, body = response.status, response.headers, response.read()
                except urllib.error.HTTPError as error:
                    status, headers, body = error.code, error.headers, error.read()
                self.send_response(status)
                self.send_header("Content-Type", headers.get("Content-Type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        Handler.extensions_map = {**Handler.extensions_map, ".js": "application/javascript", ".wasm": "application/wasm"}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ViewerServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def open_in_ohif(url: str, shots: Path, browser: str, segment_names: list[str]) -> dict:
    """Run tests/browser/ohif_viewer.mjs; return what it saw, console messages included."""
    result = subprocess.run(
        [shutil.which("node"), str(BROWSER_TESTS / "ohif_viewer.mjs"), url, str(shots), json.dumps(segment_names)],
        check=False, capture_output=True, text=True, timeout=400, cwd=BROWSER_TESTS,
        env={**os.environ, "CHROMIUM": browser},
    )
    lines = result.stdout.strip().splitlines()
    seen = json.loads(lines[-1]) if lines else {}
    assert result.returncode == 0, (
        f"{seen.get('error')}\npage text: {seen.get('pageText', '')[:2000]}\n"
        f"console errors: {json.dumps([m for m in seen.get('console', []) if m['type'] in ('error', 'pageerror')], indent=1)[:4000]}"
        f"\n{result.stderr[-2000:]}")
    return seen


def rgb_of(css: str) -> tuple[int, int, int]:
    """``rgb(r, g, b)`` or ``rgba(r, g, b, a)`` as a tuple."""
    inner = css[css.index("(") + 1:css.index(")")]
    r, g, b = (round(float(v)) for v in inner.split(",")[:3])
    return r, g, b


def test_ohif_shows_the_ct_the_seg_segments_and_the_sr(tmp_path, node_weights, request):
    browser = require_browser()
    from dicom_sr.summary_draw import ARTERY_COLOURS, UNCOUNTED_COLOUR
    from pipeline.scoring.uncounted import DESCRIPTION as UNCOUNTED_LABEL
    from training.phantom.generate import generate_case, write_case

    started = time.monotonic()
    orthanc = OrthancPeer(tmp_path / "orthanc", dicomweb=True)
    request.addfinalizer(orthanc.stop)
    orthanc.start()
    port = free_port()
    config = write_node_config(tmp_path / "config.toml", port=port, storage=tmp_path / "var", weights=node_weights,
                               destinations=[(orthanc.aet, orthanc.dicom_port)])
    node = NodeProcess(config, port, tmp_path / "node.log").start()
    request.addfinalizer(node.stop)

    case = generate_case(seed=SEED)
    ct = write_case(case, tmp_path / "phantom") / "dicom"
    for peer, called in ((orthanc.dicom_port, orthanc.aet), (node.port, "CACNODE")):
        sent = storescu(peer, [ct], called=called)
        assert sent.returncode == 0, sent.stderr
    study_uid = str(case.datasets[0].StudyInstanceUID)

    def reports() -> dict[str, str] | None:
        """Modality -> Orthanc series ID, once the SR and SEG are there."""
        modalities = {s["MainDicomTags"].get("Modality"): s["ID"] for s in orthanc.rest("GET", "/series?expand")}
        return modalities if {"SR", "SEG"} <= modalities.keys() else None

    try:
        held = wait_for(reports, 300, "Orthanc to hold the node's SR and SEG")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the node's log ends:\n{node.log()[-3000:]}") from None
    seg_instance = orthanc.rest("GET", f"/series/{held['SEG']}/instances")[0]["ID"]
    seg = pydicom.dcmread(_download(orthanc, seg_instance), stop_before_pixels=True)
    segment_names = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    # the arteries' segments, and the grey one of the calcium no artery counts when there is such calcium
    colours = {**ARTERY_COLOURS, UNCOUNTED_LABEL: UNCOUNTED_COLOUR}
    assert set(segment_names) <= set(colours) and len(set(segment_names) & set(ARTERY_COLOURS)) >= 2, segment_names
    reported_at = time.monotonic()

    server = ViewerServer(OHIF_DIST, APP_CONFIG, orthanc.base_url).start()
    request.addfinalizer(server.stop)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    url = f"http://127.0.0.1:{server.port}/viewer?StudyInstanceUIDs={study_uid}"
    seen = open_in_ohif(url, shots, browser, segment_names)
    browsed_at = time.monotonic()
    print(f"node to Orthanc {reported_at - started:.0f} s, OHIF {browsed_at - reported_at:.0f} s; "
          f"screenshots in {shots}")
    print("thumbnails:", seen.get("thumbnails"))
    print("prompts accepted:", seen.get("prompts"))
    print("segmentation panel:", seen.get("segments"))

    # -- the CT is drawn
    assert seen["ctLit"] > 0, "the viewport stayed black"
    assert any("CT" in t for t in seen["thumbnails"]), seen["thumbnails"]

    # -- the SEG: each segment by its artery's name, in the artery's colour
    shown = {row["name"]: row["colour"] for row in seen["segments"]}
    assert set(shown) == set(segment_names), (shown, seen.get("segPageText", "")[:2000])
    for name in segment_names:
        assert shown[name], f"segment {name} has no colour swatch"
        got, want = rgb_of(shown[name]), colours[name]
        # the SEG holds CIELab: OHIF's conversion back to sRGB is close, not exact
        assert max(abs(a - b) for a, b in zip(got, want)) <= 12, (name, got, want)

    # -- no console errors from loading our objects
    errors = [m for m in seen["console"] if m["type"] in ("error", "pageerror")]
    filtered = [(m, why) for m in errors for key, why in UNRELATED_ERRORS.items() if key in m["text"] + m["url"]]
    if filtered:
        print("console errors left out:")
        for m, why in filtered:
            print(f"  {m['text'][:200]!r}: {why}")
    left_out = {id(m) for m, _ in filtered}
    ours = [m for m in errors if id(m) not in left_out]
    assert not ours, json.dumps(ours, indent=1)[:4000]
    failed = [r for r in seen["failedRequests"] if "/dicom-web/" in r["url"]]
    assert not failed, failed

    # -- the SR: every lesion drawn on the CT, labelled with its artery and Agatston score
    sr_instance = orthanc.rest("GET", f"/series/{held['SR']}/instances")[0]["ID"]
    lesions = sr_lesions(pydicom.dcmread(_download(orthanc, sr_instance)))
    labels = seen.get("srLabels", [])
    print(f"{len(lesions)} lesions in the SR; labels drawn by OHIF:\n ", "\n  ".join(labels) or "(none)")
    assert lesions, "the phantom's report has no lesion"
    for site, score in lesions:
        wanted = f"Coronary artery calcium score: {score:.2f}"
        assert any(wanted in label and site in label for label in labels), (site, wanted, labels)
    crashes = [m["text"][:160] for m in seen.get("srConsole", []) if "Error Boundary" in m["text"]
               or "went wrong" in m["text"]]  # fmt: skip
    assert not crashes, crashes  # OHIF's viewer failed on the SR


def sr_lesions(sr: pydicom.Dataset) -> list[tuple[str, float]]:
    """(finding site meaning, Agatston as OHIF shows it) of each lesion group (TID 1410) of the SR."""
    from dicom_sr import codes

    report = hd.sr.MeasurementReport.from_sequence(hd.sr.Comprehensive3DSR.from_dataset(sr).content)
    found = []
    for group in report.get_planar_roi_measurement_groups():
        (site,) = group.finding_sites
        (agatston,) = group.get_measurements(name=codes.AGATSTON)
        # OHIF prints Numeric Value, which our SR rounds to 0.1 (dicom_sr.sr._readable_numeric_value).
        found.append((str(site.value.meaning), float(f"{agatston.value:.1f}")))
    return found


def _download(orthanc: OrthancPeer, instance_id: str) -> io.BytesIO:
    """An instance's file from Orthanc's REST API."""
    with urllib.request.urlopen(f"{orthanc.base_url}/instances/{instance_id}/file", timeout=60) as response:
        return io.BytesIO(response.read())
