"""Several receivers and workers sharing PostgreSQL and one storage folder, with crashes.

Two ``cacnode serve --no-worker`` receivers (one AE title) and three
``cacnode worker`` processes share a throw-away PostgreSQL cluster and one
storage folder.  dcmtk ``storescu`` sends ten small series, some split
across both receivers; a worker is killed with SIGKILL while it scores and a
receiver while a series is half sent.  Every acknowledged instance is stored
once, every series is scored once (the killed worker's job by another
worker, after its lease expired) and its report reaches dcmtk ``storescp``
once, with the SOP Instance UID the database recorded.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pydicom
import pytest
from node_support import (
    CacnodeProcess,
    DcmtkStoreSCP,
    echo,
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

N_SERIES = 10
N_SLICES = 24
LEASE_SECONDS = 4.0  # short, so the killed worker's job is taken up within seconds


def _query(url: str, sql: str, args: dict | None = None) -> list:
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), args or {}).mappings())
    finally:
        engine.dispose()


def _series_set(root: Path) -> list[tuple[str, list[Path]]]:
    """Ten series whose instances announce their count (Images in Acquisition), so they complete early."""
    out = []
    for i in range(N_SERIES):
        datasets = small_series(N_SLICES, series_number=100 + i)
        for ds in datasets:
            ds.ImagesInAcquisition = N_SLICES
        out.append((str(datasets[0].SeriesInstanceUID), write_series(datasets, root / f"s{i}")))
    return out


def _send(port: int, files: list[Path]) -> None:
    result = storescu(port, files)
    assert result.returncode == 0, result.stderr


def test_two_receivers_three_workers_crashes_lose_nothing(postgres, tmp_path, node_weights):
    pacs = DcmtkStoreSCP(tmp_path / "pacs").start()
    storage = tmp_path / "shared"
    ports = [free_port(), free_port()]
    configs = []
    for i, port in enumerate(ports):
        # a long quiet period: only the announced count completes a series, so a
        # half-sent one stays open while its sender moves to the other receiver
        config = write_node_config(tmp_path / f"config{i}.toml", port=port, storage=storage, weights=node_weights,
                                   destinations=[("PACS", pacs.port)], quiet_seconds=60.0)
        config.write_text(config.read_text()
                          + f'\n[database]\nurl = "{postgres.url}"\nlease_seconds = {LEASE_SECONDS}\n')
        configs.append(config)
    receivers = [CacnodeProcess(["serve", "--no-worker", "--config", str(c)], tmp_path / f"receiver{i}.log").start()
                 for i, c in enumerate(configs)]
    workers = [CacnodeProcess(["worker", "--config", str(configs[i % 2])], tmp_path / f"worker{i}.log").start()
               for i in range(3)]
    everyone = receivers + workers
    try:
        for r, port in zip(receivers, ports):
            wait_for(lambda r=r, port=port: _up(r) and echo(port), 60, f"receiver on {port}")
        wait_for(lambda: all("loaded" in w.log() for w in workers), 120, "three workers with the model loaded")
        series = _series_set(tmp_path / "series")
        url = postgres.url

        # 1. series 0-3 split across both receivers, 4-6 to one, 7-8 to the other, in parallel
        to_a = [f for _, files in series[:4] for f in files[: N_SLICES // 2]] + [f for _, fs in series[4:7] for f in fs]
        to_b = [f for _, files in series[:4] for f in files[N_SLICES // 2:]] + [f for _, fs in series[7:9] for f in fs]
        senders = [threading.Thread(target=_send, args=(ports[0], to_a)),
                   threading.Thread(target=_send, args=(ports[1], to_b))]
        for t in senders:
            t.start()

        # 2. kill -9 a worker mid-job: frozen first (SIGSTOP), so the job is surely still its own when it dies
        victim_job, victim = wait_for(lambda: _freeze_a_busy_worker(url, workers), 120, "a worker busy with a job")
        victim.kill()
        for t in senders:
            t.join(120)

        # 3. the last series: half to receiver B, which is killed, the rest to receiver A
        _, last_files = series[9]
        _send(ports[1], last_files[: N_SLICES // 2])
        receivers[1].kill()
        _send(ports[0], last_files[N_SLICES // 2:])

        uids = [uid for uid, _ in series]

        def all_sent() -> bool:
            rows = _query(url, "SELECT state FROM series WHERE series_uid = ANY(:u)", {"u": uids})
            return len(rows) == N_SERIES and all(r["state"] == "sent" for r in rows)

        wait_for(all_sent, 150, "all ten series scored and delivered")

        # every instance stored once
        counts = _query(url, "SELECT series_uid, n_instances FROM series")
        assert sorted(r["n_instances"] for r in counts) == [N_SLICES] * N_SERIES
        assert _query(url, "SELECT COUNT(*) AS n FROM instances")[0]["n"] == N_SERIES * N_SLICES
        assert len(list((storage / "spool").glob("*/*/*.dcm"))) == N_SERIES * N_SLICES
        # every series scored once (one job, one report), the killed worker's job on a second attempt
        jobs = _query(url, "SELECT id, series_uid, state, attempts, sr_uid FROM jobs ORDER BY id")
        assert sorted(j["series_uid"] for j in jobs) == sorted(uids)
        assert all(j["state"] == "sent" for j in jobs)
        assert {j["id"]: j["attempts"] for j in jobs}[victim_job["id"]] == 2
        # delivered once per series, with the UID the database recorded
        deliveries = _query(url, "SELECT job_id, state FROM deliveries")
        assert sorted(d["job_id"] for d in deliveries) == sorted(j["id"] for j in jobs)
        wait_for(lambda: len(_srs(pacs)) >= N_SERIES, 30, "ten SRs at the PACS")
        srs = _srs(pacs)
        assert sorted(srs) == sorted(j["sr_uid"] for j in jobs)  # one each: no duplicate, none missing
        assert "taken up" in "".join(w.log() for w in workers) or "re-queued" in "".join(w.log() for w in workers)
    finally:
        for p in everyone:
            if p.alive():
                p.stop()
        pacs.stop()


def _freeze_a_busy_worker(url: str, workers: list[CacnodeProcess]) -> tuple[dict, CacnodeProcess] | None:
    """Stop (SIGSTOP) the worker of a running job and return both, once the job is seen still running under it."""
    for job in _query(url, "SELECT id, lease_owner FROM jobs WHERE state = 'running'"):
        pid = int(job["lease_owner"].split(":")[1].split("/")[0])  # owner: host:pid/worker#random
        (worker,) = [w for w in workers if w.pid == pid]
        os.kill(pid, signal.SIGSTOP)
        still = _query(url, "SELECT 1 FROM jobs WHERE id = :id AND state = 'running' AND lease_owner = :o",
                       {"id": job["id"], "o": job["lease_owner"]})
        if still:
            return job, worker
        os.kill(pid, signal.SIGCONT)  # it finished meanwhile: try again
    return None


def _up(process: CacnodeProcess) -> bool:
    if not process.alive():
        raise AssertionError(f"{process.args} exited:\n{process.log()}")
    return True


def _srs(pacs: DcmtkStoreSCP) -> list[str]:
    out = []
    for path in pacs.files():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "SR":
            out.append(str(ds.SOPInstanceUID))
    return out
