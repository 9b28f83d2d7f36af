"""Latency and throughput of the explorer's decode endpoint under concurrent load.

Starts `vaelab explore RUN` in a subprocess on 127.0.0.1 (any free port), waits until it answers,
then `--clients` threads (default 16) send `--requests` POST /api/decode calls in total (default
2000; random z in [-3, 3]^D, one keep-alive connection per client via http.client) and prints
p50/p90/p99/max latency and throughput. Only loopback traffic; the request count is fixed and the
whole run stops at `--time-limit` seconds.

Target (issue 5): p99 < 50 ms on 2 CPU cores for the MNIST MLP model.

    python benchmarks/explorer_latency.py /work/runs/mnist-paper
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

DEFAULT_RUN = Path(__file__).resolve().parents[2] / "runs" / "mnist-paper"


def start_server(run: str, threads: int, timeout: float) -> tuple[subprocess.Popen, int]:
    """`vaelab explore RUN --port 0` -> (process, port), once it prints its URL."""
    cmd = [sys.executable, "-m", "vaelab", "explore", run, "--host", "127.0.0.1", "--port", "0",
           "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("vaelab explorer: http://127.0.0.1:"):
            return proc, int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
    proc.kill()
    raise SystemExit("the explorer did not start:\n" + "".join(seen))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
    return json.loads(body)


def client(port: int, bodies: list[bytes], start: threading.Barrier, deadline: float, out: list[float],
           failures: list[str]) -> None:
    """Send `bodies` one after another on one keep-alive connection; append each latency (s)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    start.wait()
    for body in bodies:
        if time.monotonic() > deadline:
            failures.append("time limit")
            break
        t0 = time.perf_counter()
        conn.request("POST", "/api/decode", body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        out.append(time.perf_counter() - t0)
        if response.status != 200 or not payload.startswith(b"\x89PNG"):
            failures.append(f"{response.status} {payload[:100]!r}")
    conn.close()


def run_load(port: int, latent_dim: int, clients: int, requests: int, time_limit: float, seed: int) -> dict:
    rng = random.Random(seed)
    bodies = [json.dumps({"z": [round(rng.uniform(-3, 3), 4) for _ in range(latent_dim)]}).encode()
              for _ in range(requests)]
    shares = [bodies[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)
    deadline = time.monotonic() + time_limit
    threads = [threading.Thread(target=client, args=(port, shares[i], barrier, deadline, latencies[i], failures))
               for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = sorted(x for per_client in latencies for x in per_client)
    return {"latencies": flat, "wall": wall, "failures": failures}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def main() -> int:
    from vaelab.hardware import describe_machine

    print(describe_machine(), flush=True)  # speed depends on the CPU model: every benchmark says which
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default=str(DEFAULT_RUN), help=f"run folder (default {DEFAULT_RUN})")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads in the server (vaelab explore)")
    parser.add_argument("--warmup", type=int, default=100, help="requests before measuring")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds before the load stops")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 100_000):
        raise SystemExit("--clients must be 1..256 and --requests 1..100000")

    print(f"starting vaelab explore {args.run} (torch threads {args.threads}) ...", flush=True)
    proc, port = start_server(args.run, args.threads, timeout=120)
    try:
        meta = get_json(port, "/api/meta")
        print(f"model: {meta['arch']} latent {meta['latent_dim']} {meta['image_shape']}; "
              f"machine: {os.cpu_count()} CPUs", flush=True)
        run_load(port, meta["latent_dim"], min(args.clients, args.warmup), args.warmup, args.time_limit, args.seed + 1)
        cpu_before = cpu_seconds(proc.pid)
        result = run_load(port, meta["latent_dim"], args.clients, args.requests, args.time_limit, args.seed)
        cpu_after = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

    lat = result["latencies"]
    if not lat:
        raise SystemExit("no request completed")
    ms = [x * 1000 for x in lat]
    print(f"{len(lat)} requests, {args.clients} concurrent clients, {result['wall']:.2f} s")
    print(f"latency ms: p50 {percentile(ms, 50):.2f}  p90 {percentile(ms, 90):.2f}  p99 {percentile(ms, 99):.2f}  "
          f"max {ms[-1]:.2f}  mean {statistics.fmean(ms):.2f}")
    print(f"throughput: {len(lat) / result['wall']:.0f} requests/s")
    if cpu_before is not None and cpu_after is not None:
        # CPU the server spent per request: a figure that other load on the machine barely moves.
        print(f"server CPU per request: {(cpu_after - cpu_before) / len(lat) * 1000:.2f} ms "
              f"(load average now: {os.getloadavg()[0]:.1f})")
    if result["failures"]:
        print(f"failures: {len(result['failures'])} (first: {result['failures'][0]})")
        return 1
    target = "met" if percentile(ms, 99) < 50 else "NOT met"
    print(f"target p99 < 50 ms: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
