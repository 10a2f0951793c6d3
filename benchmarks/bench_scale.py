"""Scale-out: series per minute with 1, 2 and 4 workers on SQLite and on PostgreSQL; PostgreSQL's cost per instance.

For each backend and worker count, one receiver (``cacnode serve --no-worker``)
and N ``cacnode worker`` processes share the database and a storage folder
(SQLite: the file, all on this machine; PostgreSQL: a throw-away cluster on
127.0.0.1).  dcmtk ``storescu`` sends small series (24 slices of 64x64 that
announce their count, so they complete as soon as they are in).  Two figures:
scoring (half the series queued before the workers start; from the first
job started to the last finished, in the database) and end to end (the other
half, workers warm; from the first send to the last report delivered to
dcmtk ``storescp``, so the single receiver's ingest is part of it).  Then
the added latency of PostgreSQL per stored instance: the same storescu send
to a receiver on each backend (alternating rounds), and
``Database.record_instance`` alone.  Prints the figures; on a 2-core machine
more workers than cores cannot go faster, which the figures will show.

    python benchmarks/bench_scale.py [--series 16] [--workers 1 2 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from conftest import free_port  # noqa: E402
from node_support import (  # noqa: E402
    CacnodeProcess,
    DcmtkStoreSCP,
    PostgresServer,
    echo,
    postgres_binaries,
    small_series,
    storescu,
    wait_for,
    write_node_config,
    write_series,
)

from scp.db import Database  # noqa: E402
from scp.spool import InstanceKey  # noqa: E402

SLICES = 24
WEIGHTS = REPO / "models" / "cacnode-v1.pt"


def make_series(root: Path, count: int) -> list[Path]:
    """``count`` series folders that complete early (Images in Acquisition)."""
    folders = []
    for i in range(count):
        datasets = small_series(SLICES, series_number=200 + i)
        for ds in datasets:
            ds.ImagesInAcquisition = SLICES
        write_series(datasets, root / f"s{i}")
        folders.append(root / f"s{i}")
    return folders


def new_database(server: PostgresServer | None, name: str) -> str:
    """An empty database on ``server`` (its URL), or "" for SQLite."""
    if server is None:
        return ""
    from sqlalchemy import create_engine, text

    engine = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def config_for(folder: Path, port: int, pacs_port: int, url: str) -> Path:
    config = write_node_config(folder / "config.toml", port=port, storage=folder / "var", weights=WEIGHTS,
                               destinations=[("PACS", pacs_port)], quiet_seconds=30.0)
    if url:
        config.write_text(config.read_text() + f'\n[database]\nurl = "{url}"\n')
    return config


def throughput(folder: Path, url: str, workers: int, series: list[Path], pacs: DcmtkStoreSCP) -> tuple[float, float]:
    """Series per minute: end to end (first send to last delivery) and scoring alone (jobs queued beforehand)."""
    port = free_port()
    config = config_for(folder, port, pacs.port, url)
    receiver = CacnodeProcess(["serve", "--no-worker", "--config", str(config)], folder / "receiver.log").start()
    procs = [receiver]
    try:
        wait_for(lambda: echo(port), 60, "the receiver")
        db = Database(url or folder / "var" / "cacnode.sqlite3")
        half = len(series) // 2
        # (a) scoring alone: half the series queued before the workers start; the span of their jobs
        send(port, series[:half])
        wait_for(lambda: db.state_counts()["jobs"].get("complete", 0) == half, 120, "the first half queued")
        procs += [CacnodeProcess(["worker", "--config", str(config)], folder / f"worker{i}.log").start()
                  for i in range(workers)]
        wait_for(lambda: db.state_counts()["series"].get("sent", 0) == half, 600, "the first half delivered",
                 interval=0.02)
        (span,) = db._query("SELECT MAX(finished) - MIN(started) FROM jobs")  # noqa: SLF001 - a benchmark's peek
        scoring = half / span[0] * 60
        # (b) end to end, the workers warm: the other half from the first send to the last delivery
        start = time.perf_counter()
        send(port, series[half:])
        wait_for(lambda: db.state_counts()["series"].get("sent", 0) == len(series), 600, "every series delivered",
                 interval=0.02)
        end_to_end = (len(series) - half) / (time.perf_counter() - start) * 60
        db.close()
        return end_to_end, scoring
    finally:
        for p in procs:
            p.stop()


def send(port: int, folders: list[Path]) -> None:
    result = storescu(port, folders)
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr}")


def send_seconds(port: int, folder: Path) -> float:
    start = time.perf_counter()
    result = storescu(port, [folder])
    if result.returncode != 0:
        raise SystemExit(f"storescu failed: {result.stderr}")
    return time.perf_counter() - start


def ingest_latency(root: Path, urls: dict[str, str], instances: int, rounds: int) -> dict[str, float]:
    """Milliseconds per instance for storescu to a receiver on each backend (no worker: nothing is scored)."""
    datasets = small_series(instances, series_number=300)
    procs, ports = [], {}
    times: dict[str, list[float]] = {name: [] for name in urls}
    for name, url in urls.items():
        folder = root / f"ingest-{name}"
        folder.mkdir()
        ports[name] = free_port()
        config = config_for(folder, ports[name], free_port(), url)
        procs.append(CacnodeProcess(["serve", "--no-worker", "--config", str(config)], folder / "receiver.log").start())
    try:
        for name in urls:
            wait_for(lambda port=ports[name]: echo(port), 60, f"the {name} receiver")
        for r in range(rounds):
            # a fresh series UID each round, so every instance is new work for the database
            for ds in datasets:
                ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.1.{r}"
                ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{r}.{ds.InstanceNumber}"
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            folder = root / f"round{r}"
            write_series(datasets, folder)
            for name in urls:
                times[name].append(send_seconds(ports[name], folder) / instances * 1000)
    finally:
        for p in procs:
            p.stop()
    return {name: statistics.median(t) for name, t in times.items()}


def record_latency(urls: dict[str, str], root: Path, n: int) -> dict[str, float]:
    """Milliseconds per ``Database.record_instance`` on each backend (one thread)."""
    out = {}
    for name, url in urls.items():
        db = Database(url or root / f"record-{name}.sqlite3")
        start = time.perf_counter()
        for i in range(n):
            db.record_instance(InstanceKey("1.2.3", f"1.2.3.{i // 100}", f"1.2.3.9.{i}"), "1.2", root / "x", 1,
                               time.time())
        out[name] = (time.perf_counter() - start) / n * 1000
        db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=200, help="instances per ingest round")
    args = parser.parse_args()
    bin_dir = postgres_binaries()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = PostgresServer(bin_dir).start()
    # the benchmark cluster is fsync-off like the test's: it measures the node's cost, not the disk's
    print(f"PostgreSQL {bin_dir.parts[-2]} on 127.0.0.1:{server.port} (fsync off); SQLite WAL, synchronous=NORMAL")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            root = Path(tmp)
            series = make_series(root / "series", args.series)
            pacs = DcmtkStoreSCP(root / "pacs").start()
            try:
                print(f"\nseries per minute, {args.series} series of {SLICES} slices, 1 receiver;"
                      " scoring: half the series queued before the workers start, first job started to last"
                      " finished; end to end: the other half, first instance sent to last report delivered")
                for backend in ("sqlite", "postgresql"):
                    for workers in args.workers:
                        name = f"run_{backend}_{workers}"
                        folder = root / name
                        folder.mkdir()
                        url = new_database(server if backend == "postgresql" else None, name)
                        end_to_end, scoring = throughput(folder, url, workers, series, pacs)
                        print(f"  {backend:<10} {workers} worker(s): scoring {scoring:6.1f}   end to end"
                              f" {end_to_end:6.1f}", flush=True)
            finally:
                pacs.stop()
            urls = {"sqlite": "", "postgresql": new_database(server, "ingest")}
            ingest = ingest_latency(root, urls, args.instances, args.rounds)
            print(f"\nstorescu to one receiver, {args.instances} instances, median of {args.rounds} rounds"
                  " (ms per instance):")
            for name, ms in ingest.items():
                print(f"  {name:<10} {ms:6.2f}")
            print(f"  PostgreSQL adds {ingest['postgresql'] - ingest['sqlite']:+.2f} ms per instance")
            urls["postgresql"] = new_database(server, "record")
            record = record_latency(urls, root, 2000)
            print("\nDatabase.record_instance alone (ms per instance):")
            for name, ms in record.items():
                print(f"  {name:<10} {ms:6.3f}")
            print(f"  PostgreSQL adds {record['postgresql'] - record['sqlite']:+.3f} ms per instance")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
