"""Latency: last instance acknowledged -> SR stored at the PACS (target: <= quiet period + 3 s).

Sends phantom series (``training.phantom.generate``) with dcmtk storescu to
``cacnode serve`` (bundled weights when present, else a small random network,
as printed), with a dcmtk storescp as the PACS, and times from storescu's
exit (every instance acknowledged) to the SR file appearing at the PACS.
Also prints the node's own account of where the time went.

    python benchmarks/bench_latency.py [--rounds 3] [--quiet 2]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks"), str(REPO)]

from bench_ingest import weights_for  # noqa: E402
from conftest import free_port  # noqa: E402
from node_support import DcmtkStoreSCP, NodeProcess, storescu, wait_for, write_node_config  # noqa: E402

from training.phantom.ct_writer import write_datasets  # noqa: E402
from training.phantom.generate import generate_case  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet", type=float, default=2.0, help="[series] quiet_seconds of the node")
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        root = Path(tmp)
        weights = weights_for(root)
        print(f"model: {weights.name}; quiet period {args.quiet:.1f} s; target <= {args.quiet + 3:.1f} s")
        cases = []
        for i in range(args.rounds):
            case = generate_case(args.seed + i)
            folder = root / f"case{i}"
            write_datasets(case.datasets, folder, case.file_names)
            cases.append((case, folder))
        pacs = DcmtkStoreSCP(root / "pacs").start()
        port = free_port()
        config = write_node_config(root / "node.toml", port=port, storage=root / "var", weights=weights,
                                   destinations=[("PACS", pacs.port)], quiet_seconds=args.quiet,
                                   eligibility={"min_slices": 20})
        node = NodeProcess(config, port, root / "node.log").start()
        latencies = []
        try:
            wait_for(lambda: "loaded" in node.log(), 120, "the worker to load the model")
            for i, (case, folder) in enumerate(cases):
                before = set(pacs.done.glob("SR*"))
                result = storescu(port, [folder])
                acked = time.perf_counter()
                if result.returncode != 0:
                    raise SystemExit(f"storescu failed: {result.stderr.strip()}")
                wait_for(lambda: set(pacs.done.glob("SR*")) - before, 300, "the SR at the PACS", interval=0.01)
                latency = time.perf_counter() - acked
                latencies.append(latency)
                print(f"round {i + 1}: {case.hu.shape[0]} slices {case.hu.shape[1]}x{case.hu.shape[2]}: "
                      f"{latency:.2f} s from last ack to SR at the PACS ({latency - args.quiet:+.2f} s over quiet)")
        finally:
            node.stop()
            pacs.stop()
        for line in node.log().splitlines():
            m = re.search(r"reported \(.*\) in ([0-9.]+) s", line)
            if m:
                print(f"  node: processing took {m.group(1)} s")
        print(f"median {statistics.median(latencies):.2f} s; over quiet period: "
              f"{statistics.median(latencies) - args.quiet:.2f} s (target <= 3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
