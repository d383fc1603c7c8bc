"""The node API's responsiveness: ``GET /health`` latency of an honest client on a quiet node,
while one outsider holds every connection slot with idle connections from 4 addresses, and
while a 10,000-bin DP histogram is being planned.

    python -m bench.node_api [--requests 100]

One node (party A of a 3-party loopback consortium, scheduler not started), its API on
uvicorn with the default limits; each request on a new connection, as the client makes them.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _latencies(client, count: int, stop: threading.Event | None = None) -> list[float]:
    out = []
    for _ in range(count):
        if stop is not None and stop.is_set():
            break
        t0 = time.perf_counter()
        assert client.get("/health")["ok"]
        out.append(time.perf_counter() - t0)
    return out


def _row(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return (f"| {name} | {len(xs)} | {1000 * statistics.median(xs):.1f} | {1000 * p95:.1f} | "
            f"{1000 * xs[-1]:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.node_api")
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args(argv)
    import yaml

    from jointstats.node.client import NodeClient, _sign
    from jointstats.consortium.keys import make_analyst_key
    from jointstats.node.service import Node, make_server
    from tests.conftest import cohort_frame, write_consortium
    from tests.unit.test_node_http import BIG_SPEC

    root = Path(tempfile.mkdtemp(prefix="bench-node-api-"))
    configs = write_consortium(root, [cohort_frame(10, i) for i in range(3)])
    make_analyst_key("alice", root / "analysts")
    data = yaml.safe_load(configs[0].read_text())
    data["policy"]["analysts"] = {"alice": "../analysts/alice.pub"}
    configs[0].write_text(yaml.safe_dump(data))
    node = Node(configs[0], log=lambda msg: None)
    server = make_server(node, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}"
    client = NodeClient(url)
    rows = ["| scenario | requests | median (ms) | p95 (ms) | max (ms) |", "| --- | --- | --- | --- | --- |"]
    try:
        _latencies(client, 5)
        rows.append(_row("quiet node", _latencies(client, args.requests)))

        idle = []
        for i in range(2, 6):  # the review's attack: 4 addresses x 16 idle connections
            for _ in range(16):
                s = socket.socket()
                s.bind((f"127.0.0.{i}", 0))
                s.connect(("127.0.0.1", port))
                s.send(b"GET /health HTTP/1.1\r\n")
                idle.append(s)
        time.sleep(0.3)
        rows.append(_row("64 idle connections from 4 other addresses", _latencies(client, args.requests)))
        for s in idle:
            s.close()

        text = BIG_SPEC
        ts, sig = _sign(root / "analysts" / "alice.key", text, "big", "alice")
        done = threading.Event()
        took = {}

        def submit():
            t0 = time.perf_counter()
            took["status"] = client.request("POST", "/jobs", {"spec": text, "job_id": "big", "timestamp": ts,
                                                              "analyst": "alice", "signature": sig})[0]
            took["seconds"] = time.perf_counter() - t0
            done.set()
        threading.Thread(target=submit).start()
        during = _latencies(NodeClient(url), 10_000, stop=done)
        done.wait(120)
        rows.append(_row(f"while a 10,000-bin DP histogram is planned ({took['seconds']:.1f} s, "
                         f"answer {took['status']})", during))
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        node.stop()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
