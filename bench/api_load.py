"""Load test of `cxr serve`: the former standard-library server and the FastAPI / uvicorn one, side by side.

Both servers run at once, each in its own process with the shipped baseline checkpoint, and are driven in
turn with the same requests: POST /predict of a real 512 x 512 NIH PNG with every label's heatmap
(``"heatmaps": true``) and 5 Monte-Carlo dropout passes (``"mc_samples": 5``), by 1, 8 and 32 client
threads (one keep-alive connection each), each level in rounds that alternate between the servers. Per server and concurrency: requests per second, p50 / p95
latency, failures; per server: resident memory (VmRSS from /proc) after a warm-up and after all its
requests (1,000 by default), and the ratio new / old.

The former server is not shipped: its source is taken from this repository's history at run time (the
newest committed ``cxrcore/api.py`` that is still the ThreadingHTTPServer one) and loaded as a module of
the package, so it runs against today's predictor, exactly as it was served.

    python bench/api_load.py [--requests 100,450,450] [--warmup 10] [--rounds 4]
    python bench/api_load.py --plateau 4x96     # memory only: does it level off at concurrency 32?
"""
from __future__ import annotations

import argparse
import base64
import http.client
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGE = REPO / "tests" / "data" / "formats" / "00000001_000.png"
CHECKPOINT = REPO / "checkpoints" / "baseline"
CONCURRENCY = (1, 8, 32)


def legacy_source() -> tuple[str, str]:
    """(commit, source) of the newest committed cxrcore/api.py that is the standard-library server."""
    commits = subprocess.run(["git", "log", "--format=%H", "--", "cxrcore/api.py"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    for c in commits:
        src = subprocess.run(["git", "show", f"{c}:cxrcore/api.py"], cwd=REPO, capture_output=True, text=True).stdout
        if "ThreadingHTTPServer" in src and "class Handler(BaseHTTPRequestHandler)" in src:
            return c, src
    sys.exit("no standard-library cxrcore/api.py in this repository's history (a shallow clone?)")


def serve(kind: str, port_file: Path) -> None:
    """Child process: one server on a free port of 127.0.0.1, the port written to ``port_file``."""
    import cxrcore  # noqa: F401  (the package the former module's relative imports resolve in)

    if kind == "old":
        commit, src = legacy_source()
        spec = importlib.util.spec_from_loader("cxrcore.api_legacy", loader=None)
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = "cxrcore"
        sys.modules[spec.name] = mod
        exec(compile(src, f"<cxrcore/api.py at {commit[:10]}>", "exec"), mod.__dict__)
    else:
        import cxrcore.api as mod
    server = mod.make_server(mod.Service([str(CHECKPOINT)]), "127.0.0.1", 0)
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def drive(port: int, body: bytes, n: int, concurrency: int) -> dict:
    """``n`` POST /predict over ``concurrency`` threads, one keep-alive connection each: their latencies, the
    failures and the wall time."""
    latencies, failures, lock = [], [], threading.Lock()
    todo = iter(range(n))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if next(todo, None) is None:
                    break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and len(json.loads(data)["heatmaps"]) == 14
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                ok, data = False, repr(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            dt = time.perf_counter() - t0
            with lock:
                (latencies if ok else failures).append(dt if ok else data[:200])
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"n": n, "latencies": latencies, "failures": failures, "wall": time.perf_counter() - t0}


def summary(parts: list[dict]) -> dict:
    """One concurrency level's rounds together: req/s over their summed wall time, p50 / p95 of every latency."""
    latencies = [x for p in parts for x in p["latencies"]]
    failures = [x for p in parts for x in p["failures"]]
    wall = sum(p["wall"] for p in parts)
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {"n": sum(p["n"] for p in parts), "ok": len(latencies), "failed": len(failures),
            "rps": len(latencies) / wall, "p50": q[49], "p95": q[94], "wall": wall,
            "first_failure": failures[0] if failures else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", default="100,450,450",
                    help="requests at concurrency 1, 8, 32 per server (default 100,450,450: 1,000 in all)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4,
                    help="each level's requests in this many rounds, the servers alternating (so a change in the "
                         "machine's load falls on both)")
    ap.add_argument("--plateau", metavar="ROUNDSxN",
                    help="instead: ROUNDS rounds of N requests at concurrency 32 per server, resident memory after "
                         "each (does it level off or keep growing?), e.g. 4x96")
    ap.add_argument("--serve", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, Path(a.port_file))
        return
    counts = [int(x) for x in a.requests.split(",")]
    assert len(counts) == len(CONCURRENCY), "--requests takes three counts"
    commit, _ = legacy_source()
    label = {"old": f"stdlib ThreadingHTTPServer ({commit[:10]})", "new": "FastAPI on uvicorn (this tree)"}
    body = json.dumps({"image": base64.b64encode(IMAGE.read_bytes()).decode(), "name": IMAGE.name,
                       "heatmaps": True, "mc_samples": 5}).encode()
    procs, ports = {}, {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        for kind in ("old", "new"):
            pf = tmp / f"cxr_api_load_{os.getpid()}_{kind}.port"
            pf.unlink(missing_ok=True)
            procs[kind] = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port-file", str(pf)],
                                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while not (pf.exists() and pf.read_text()):
                if procs[kind].poll() is not None or time.time() > deadline:
                    sys.exit(f"the {kind} server did not start")
                time.sleep(0.2)
            ports[kind] = int(pf.read_text())
            pf.unlink()
        for kind in ("old", "new"):
            drive(ports[kind], body, a.warmup, 1)
        if a.plateau:
            rounds, n = (int(x) for x in a.plateau.lower().split("x"))
            rss = {k: [rss_mib(p.pid)] for k, p in procs.items()}
            failed = {k: 0 for k in procs}
            for i in range(rounds):
                for kind in (("old", "new") if i % 2 == 0 else ("new", "old")):
                    failed[kind] += len(drive(ports[kind], body, n, 32)["failures"])
                    rss[kind].append(rss_mib(procs[kind].pid))
            for kind in ("old", "new"):
                print(f"{label[kind]}: resident MiB after warm-up, then after each {n} requests at concurrency 32: "
                      + " -> ".join(f"{m:.0f}" for m in rss[kind]) + f"; {failed[kind]} of {rounds * n} failed")
            return
        before = {k: rss_mib(p.pid) for k, p in procs.items()}
        results = {k: {} for k in procs}
        trajectory = {k: [] for k in procs}  # resident memory after each level
        for c, n in zip(CONCURRENCY, counts):
            parts = {k: [] for k in procs}
            sizes = [n // a.rounds + (i < n % a.rounds) for i in range(a.rounds)]
            for i, m in enumerate(sizes):
                for kind in (("old", "new") if i % 2 == 0 else ("new", "old")):
                    parts[kind].append(drive(ports[kind], body, m, c))
            for kind in procs:
                results[kind][c] = r = summary(parts[kind])
                trajectory[kind].append(rss_mib(procs[kind].pid))
                print(f"  {kind} c={c}: {r['ok']}/{r['n']} in {r['wall']:.1f} s", file=sys.stderr, flush=True)
        after = {k: rss_mib(p.pid) for k, p in procs.items()}
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(timeout=30)
    print(f"POST /predict, {IMAGE.name} (512x512 PNG), heatmaps for 14 labels, 5 MC-dropout passes; "
          f"checkpoint {CHECKPOINT.name}; load avg {os.getloadavg()[0]:.2f}")
    print(f"{'server':<42} {'conc':>4} {'n':>5} {'fail':>4} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for kind in ("old", "new"):
        for c in CONCURRENCY:
            r = results[kind][c]
            print(f"{label[kind]:<42} {c:>4} {r['n']:>5} {r['failed']:>4} {r['rps']:>7.2f} {r['p50']:>7.3f} "
                  f"{r['p95']:>7.3f}" + (f"  first failure: {r['first_failure']!r}" if r["failed"] else ""))
    print("ratios new / old:  " + "; ".join(
        f"c={c}: req/s x{results['new'][c]['rps'] / results['old'][c]['rps']:.2f}, "
        f"p95 x{results['new'][c]['p95'] / results['old'][c]['p95']:.2f}" for c in CONCURRENCY))
    total = sum(counts)
    for kind in ("old", "new"):
        steps = ", ".join(f"{m:.0f} after c={c}" for c, m in zip(CONCURRENCY, trajectory[kind]))
        print(f"resident memory, {label[kind]}: {before[kind]:.0f} MiB after warm-up -> {after[kind]:.0f} MiB after "
              f"{total} requests ({after[kind] - before[kind]:+.0f} MiB; {steps})")


if __name__ == "__main__":
    main()
