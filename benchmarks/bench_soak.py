"""Soak: many series from four senders at once, with malformed instances mixed in, through the whole node.

One CT series is generated once; each sender (a process of its own) sends it
again and again with new study, series and instance UIDs, one association
per series, as a scanner would (an association that ends with an instance
unanswered is counted, and the rest of the series sent over a new one; a
pynetdicom sender can lose a response to its own reactor thread, "Received
unexpected C-STORE service message", about once in 15 000 instances here).
After about 5 % of the slices it also sends a malformed extra instance, one of:

- ``junk``: a data set that cannot be parsed (refused, 0xC2xx/0xAxxx),
- ``mismatch``: a request whose SOP Instance UID is not the data set's (refused, 0xA900),
- ``unknown_vr``, ``no_bits_allocated``, ``truncated``: acknowledged (Success),
  then skipped with a warning when the series is scored.

The node (``cacnode serve``) reports to a dcmtk ``storescp``.  Printed: the
instances per second while sending, the listener's and the worker's RSS,
open file descriptors and threads at the start and the end, and the series,
jobs and deliveries in each final state.  It then checks that every
acknowledged instance is in the database and the spool, and that no job is
left queued or running; the exit code is 1 if not.

    python benchmarks/bench_soak.py [--series 300] [--slices 40 60] [--size 256] [--senders 4]
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import pynetdicom  # noqa: E402
from conftest import free_port, simple_hu_volume  # noqa: E402
from node_support import DcmtkStoreSCP, NodeProcess, wait_for, write_node_config  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from training.phantom.ct_writer import CTHeader, build_ct_datasets  # noqa: E402

MALFORMED_SHARE = 0.05
KINDS = ("junk", "mismatch", "unknown_vr", "no_bits_allocated", "truncated")
ACKNOWLEDGED_KINDS = ("unknown_vr", "no_bits_allocated", "truncated")
UNFINISHED_JOBS = ("complete", "running")
MAX_ASSOCIATIONS_PER_SERIES = 3
DIMSE_TIMEOUT_SECONDS = 20.0  # the node answers a C-STORE within a second or two, even under this load


@dataclass
class SenderReport:
    """What one sender sent and what the node answered."""

    instances: int = 0
    acknowledged: list[str] = field(default_factory=list)  # SOP Instance UIDs answered Success
    refused: Counter = field(default_factory=Counter)  # "kind status" -> count
    malformed: Counter = field(default_factory=Counter)
    failed_associations: int = 0  # not established, or a series not sent after MAX_ASSOCIATIONS_PER_SERIES
    aborted_associations: int = 0  # ended with an instance unanswered (the rest sent over a new one)
    timed_out: int = 0  # ...of which the sender gave up waiting (its DIMSE timeout), not the node


def base_series(slices: int, size: int) -> list[Dataset]:
    spacing = 200.0 / size  # a 200 mm field of view
    datasets = build_ct_datasets(
        simple_hu_volume(slices, size), pixel_spacing_mm=(spacing, spacing), slice_thickness_mm=3.0,
        increment_mm=3.0, origin_mm=(-100.0, -100.0, -100.0), header=CTHeader(),
    )
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return datasets


def renamed(ds: Dataset, study: str, series: str, frame: str, sop: str | None = None) -> Dataset:
    """``ds`` with new UIDs (a deep copy, whose pixel data bytes are still shared: bytes are immutable)."""
    out = copy.deepcopy(ds)
    out.StudyInstanceUID, out.SeriesInstanceUID, out.FrameOfReferenceUID = study, series, frame
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    return out


def malformed_file(kind: str, ds: Dataset, folder: Path) -> Path:
    """Write a malformed instance of ``kind``, derived from the good slice ``ds``."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    if kind == "no_bits_allocated":
        ds["PixelData"].VR = "OW"  # pydicom would take OB or OW from Bits Allocated
        del ds.BitsAllocated
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    if kind == "junk":
        raw = raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\xff" + b"\x00" * 64
    elif kind == "mismatch":
        good = str(ds.SOPInstanceUID).encode()
        other = good[:-1] + (b"1" if good[-1:] != b"1" else b"2")  # same length: the file meta stays valid
        raw = raw[:meta_end] + raw[meta_end:].replace(good, other)
    elif kind == "unknown_vr":
        at = raw.index(b"\x08\x00\x08\x00CS", meta_end)  # Image Type's VR becomes "ZZ"
        raw = raw[: at + 4] + b"ZZ" + raw[at + 6:]
    elif kind == "truncated":
        raw = raw[: len(raw) - len(ds.PixelData) // 2]
    path.write_bytes(raw)
    return path


def run_sender(index: int, port: int, series_count: int, senders: int, slices: tuple[int, int], size: int,
               seed: int, scratch: str) -> SenderReport:
    """One sender: every ``senders``-th series, one association each, malformed extras mixed in."""
    # pynetdicom logs through a NullHandler unless the app configures logging: show why an association ends
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(levelname)s sender{index} %(name)s: %(message)s")
    rng = random.Random(seed + index)
    base = base_series(slices[1], size)
    folder = Path(scratch) / f"sender{index}"
    folder.mkdir(parents=True, exist_ok=True)
    report = SenderReport()
    ae = AE(ae_title=f"SENDER{index}")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 60
    ae.dimse_timeout = DIMSE_TIMEOUT_SECONDS
    kinds = list(KINDS)
    for _ in range(index, series_count, senders):
        count = rng.randint(*slices)
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        sends: list[tuple[str, Dataset | Path]] = []
        for ds in base[:count]:
            sends.append(("good", renamed(ds, study, series, frame)))
            if rng.random() < MALFORMED_SHARE:
                kind = kinds[report.malformed.total() % len(kinds)]
                report.malformed[kind] += 1
                sends.append((kind, malformed_file(kind, renamed(ds, study, series, frame), folder)))
        try:
            send_series(ae, port, sends, report)
        finally:
            for _, what in sends:
                if isinstance(what, Path):
                    what.unlink()
    return report


def send_series(ae: AE, port: int, sends: list[tuple[str, Dataset | Path]], report: SenderReport) -> None:
    """Send one series over one association; after an abort, the rest (from the unanswered one) over a new one."""
    position = 0
    for _ in range(MAX_ASSOCIATIONS_PER_SERIES):
        assoc = ae.associate("127.0.0.1", port, ae_title="CACNODE")
        if not assoc.is_established:
            report.failed_associations += 1
            return
        try:
            while position < len(sends):
                kind, what = sends[position]
                sop = str(what.SOPInstanceUID) if isinstance(what, Dataset) else what.stem
                pynetdicom._config.STORE_SEND_CHUNKED_DATASET = isinstance(what, Path)  # bytes as they are
                began = time.monotonic()
                status = getattr(assoc.send_c_store(what), "Status", None)
                report.instances += 1
                if status is None and not assoc.is_established:
                    report.aborted_associations += 1  # unanswered: sent again, as a scanner would
                    if time.monotonic() - began >= DIMSE_TIMEOUT_SECONDS:
                        report.timed_out += 1
                    break
                if status == 0x0000:
                    report.acknowledged.append(sop)
                else:
                    report.refused[f"{kind} {'none' if status is None else hex(status)}"] += 1
                position += 1
        finally:
            if assoc.is_established:
                assoc.release()
        if position == len(sends):
            return
    report.failed_associations += 1


def process_figures(pid: int) -> dict[str, int]:
    """RSS (MiB), open file descriptors and threads of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) // 1024
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))
    return {"rss_mib": rss, "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())), "threads": threads}


def worker_pid(node: NodeProcess) -> int:
    return int(re.findall(r"worker started \(pid (\d+)\)", node.log())[-1])


def counts(db: Path, table: str) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state").fetchall())
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=300, help="series to send (default 300)")
    parser.add_argument("--slices", type=int, nargs=2, default=(40, 60), metavar=("MIN", "MAX"),
                        help="slices per series, drawn between MIN and MAX (default 40 60)")
    parser.add_argument("--size", type=int, default=256, help="rows and columns of a slice (default 256)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.slices[0] <= args.slices[1]:
        parser.error("--slices MIN MAX needs 1 <= MIN <= MAX")

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        root = Path(tmp)
        pacs = DcmtkStoreSCP(root / "pacs").start()
        port = free_port()
        config = write_node_config(root / "config.toml", port=port, storage=root / "var",
                                   weights=REPO / "models" / "cacnode-v1.pt", destinations=[("PACS", pacs.port)],
                                   quiet_seconds=2.0)
        node = NodeProcess(config, port, root / "node.log").start()
        db = root / "var" / "cacnode.sqlite3"
        try:
            wait_for(lambda: "worker: model" in node.log(), 120, "the worker's model")
            start = {"listener": process_figures(node.proc.pid), "worker": process_figures(worker_pid(node))}
            print(f"soak: {args.series} series of {args.slices[0]}-{args.slices[1]} slices {args.size}x{args.size},"
                  f" {args.senders} senders, about {MALFORMED_SHARE:.0%} malformed extras", flush=True)
            began = time.perf_counter()
            with ProcessPoolExecutor(max_workers=args.senders) as pool:
                futures = [
                    pool.submit(run_sender, i, port, args.series, args.senders, tuple(args.slices), args.size,
                                args.seed, str(root / "scratch"))
                    for i in range(args.senders)
                ]
                reports = [f.result() for f in futures]
            sending = time.perf_counter() - began
            instances = sum(r.instances for r in reports)
            acknowledged = [uid for r in reports for uid in r.acknowledged]
            print(f"sent {instances} instances in {sending:.1f} s: {instances / sending:.1f} instances/s"
                  f" ({len(acknowledged)} acknowledged)", flush=True)
            malformed = sum((r.malformed for r in reports), Counter())
            refused = sum((r.refused for r in reports), Counter())
            print(f"malformed extras sent: {dict(sorted(malformed.items()))}")
            print(f"not acknowledged (kind status): {dict(sorted(refused.items()))}")
            failed_assocs = sum(r.failed_associations for r in reports)
            print(f"associations refused or series given up: {failed_assocs}; associations that ended with an"
                  f" instance unanswered (rest sent again): {sum(r.aborted_associations for r in reports)},"
                  f" {sum(r.timed_out for r in reports)} of them at the sender's DIMSE timeout")

            def settled() -> bool:
                jobs, series = counts(db, "jobs"), counts(db, "series")
                pending = counts(db, "deliveries").get("pending", 0)
                return not any(jobs.get(s) for s in UNFINISHED_JOBS) and not series.get("received") and not pending

            wait_for(settled, 600 + 10 * args.series, "every series scored and delivered", interval=1.0)
            done = time.perf_counter() - began
            end = {"listener": process_figures(node.proc.pid), "worker": process_figures(worker_pid(node))}
            print(f"all scored and delivered {done:.1f} s after the first instance"
                  f" ({args.series / done * 60:.1f} series/min end to end)")
            for name in ("listener", "worker"):
                a, b = start[name], end[name]
                print(f"{name}: RSS {a['rss_mib']} -> {b['rss_mib']} MiB, open fds {a['fds']} -> {b['fds']},"
                      f" threads {a['threads']} -> {b['threads']}")
            for table in ("series", "jobs", "deliveries"):
                print(f"{table} by state: {dict(sorted(counts(db, table).items()))}")
            restarts = node.log().count("worker started (pid") - 1
            print(f"worker restarts: {restarts}; partial transfers swept: {node.log().count('partial data set')}")

            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            stored = dict(conn.execute("SELECT sop_uid, path FROM instances").fetchall())
            conn.close()
            lost = [uid for uid in acknowledged if uid not in stored or not Path(stored[uid]).is_file()]
            jobs = counts(db, "jobs")
            unfinished = sum(jobs.get(s, 0) for s in UNFINISHED_JOBS)
            print(f"acknowledged but lost: {len(lost)}; jobs left queued or running: {unfinished}")
            ok = not lost and not unfinished and not failed_assocs
        finally:
            node.stop()
            pacs.stop()
        if not ok:
            print("node log, warnings and errors:")
            print("\n".join(line[:300] for line in node.log().splitlines() if " WARNING " in line or " ERROR " in line))
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
