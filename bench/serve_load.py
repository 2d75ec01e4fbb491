"""Bounded load test of ``unclip serve`` on loopback.

Starts ``unclip serve`` as a child process on 127.0.0.1, then N client threads send
a fixed number of ``POST /api/generate`` requests in total (each with its own prompt
and seed) and check that every answer belongs to its request. Reports latency
percentiles of the answered requests (the accepted attempt, and end to end with
retries), counts by HTTP status (429 = the deliberate "queue full" refusal, retried
after a short back-off; anything else that is not 200 is an error), throughput, and
the server's resident memory (start, end, peak) read from /proc. Exit status 1 on
any error or mixed-up result.

    python bench/serve_load.py --model runs/tiny-pipeline --clients 20 --requests 200
    python bench/serve_load.py --tiny runs/serve-tiny     # builds a tiny random unCLIP pipeline first
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="pipeline directory or shipped model name")
    parser.add_argument("--tiny", type=Path, help="build (if missing) and serve a tiny random pipeline in this "
                        "directory (uses tests/helpers/pipeline.py)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="requests in total (a 429 is retried)")
    parser.add_argument("--max-attempts", type=int, default=100, help="tries per request before it is an error")
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="steps for every stage")
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop sending after this long")
    parser.add_argument("--out", type=Path, default=Path("runs/serve_load.json"))
    args = parser.parse_args(argv)
    if args.tiny is not None:
        args.model = str(build_tiny(args.tiny))
    if not args.model:
        parser.error("give --model DIR|NAME or --tiny DIR")

    port = free_port()
    server, log = start_server(args, port)
    base = f"http://127.0.0.1:{port}"
    try:
        info = wait_until_up(base, server, timeout=180)
        memory = MemorySampler(server.pid)
        memory.start()
        report = run_clients(base, args, info["stages"])
        memory.stop()
        report.update(memory.summary())
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    report.update({"model": args.model, "clients": args.clients, "requests": args.requests,
                   "num_images": args.num_images, "steps": args.steps, "max_queue": args.max_queue,
                   "cpu_count": os.cpu_count(), "hardware": _hardware()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] or report["mixed_results"] else 0


def _hardware() -> dict:
    """The host (CPU model, flags, memory) as every benchmark summary records it (bench/report.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import report

    return report.hardware()


def build_tiny(directory: Path) -> Path:
    """A tiny random unCLIP pipeline (prior + decoder + upsampler), saved once."""
    if (directory / "pipeline.json").is_file():
        return directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.pipeline import tiny_pipeline

    tiny_pipeline("full", upsampler=True).save(directory, overwrite=True)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, port: int):
    log_path = args.out.with_suffix(".server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    command = [sys.executable, "-m", "unclip.cli", "serve", "--model", args.model, "--host", "127.0.0.1",
               "--port", str(port), "--max-queue", str(args.max_queue), "--time-limit", str(args.time_limit),
               "--log-level", "warning"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log


def wait_until_up(base: str, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}; see its log")
        try:
            return httpx.get(f"{base}/api/info", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.25)
    raise SystemExit("the server did not come up in time")


class MemorySampler:
    """Samples VmRSS of a process every 0.2 s; VmHWM gives the peak."""

    def __init__(self, pid: int):
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._read("VmRSS"))
            self._stop.wait(0.2)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.peak = self._read("VmHWM")

    def summary(self) -> dict:
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        tail = self.samples[-max(1, len(self.samples) // 10):]
        return {"rss_start_mib": mib(self.samples[0]), "rss_end_mib": mib(tail[-1]),
                "rss_max_sampled_mib": mib(max(self.samples)), "rss_peak_hwm_mib": mib(self.peak)}


def run_clients(base: str, args, stages) -> dict:
    lock = threading.Lock()
    sent = {"n": 0}
    latencies, end_to_end, statuses, errors, mixed = [], [], {}, [], []
    stop_at = time.monotonic() + args.max_seconds
    steps = {f"{stage}_steps": args.steps for stage in stages}

    def take() -> int | None:
        with lock:
            if sent["n"] >= args.requests or time.monotonic() > stop_at:
                return None
            sent["n"] += 1
            return sent["n"]

    def client(index: int):
        rng = random.Random(index)
        with httpx.Client(base_url=base, timeout=args.time_limit + 30) as http:
            while (number := take()) is not None:
                body = {"prompt": f"a red circle number {number}", "num_images": args.num_images,
                        "seed": 1000 + number, **steps}
                first_try, response = time.perf_counter(), None
                for _attempt in range(args.max_attempts):  # a 429 is retried after a short back-off
                    start = time.perf_counter()
                    try:
                        response = http.post("/api/generate", json=body)
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")
                        response = None
                        break
                    with lock:
                        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code != 429:
                        break
                    time.sleep(0.5 + 0.5 * rng.random())
                else:
                    with lock:
                        errors.append(f"request {number}: still refused after {args.max_attempts} attempts")
                    continue
                if response is None:
                    continue
                if response.status_code == 200:
                    result = response.json()["result"]
                    ok = (result["seed"] == body["seed"] and result["settings"]["prompt"] == body["prompt"]
                          and len(result["images"]) == args.num_images)
                    with lock:
                        latencies.append(time.perf_counter() - start)
                        end_to_end.append(time.perf_counter() - first_try)
                        if not ok:
                            mixed.append(number)
                else:
                    with lock:
                        errors.append(f"HTTP {response.status_code}: {response.text[:200]}")

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start

    def pct(values):
        values = sorted(values)
        at = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 3)  # noqa: E731
        return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(values[-1], 3)} if values else {}

    return {"wall_s": round(wall, 2), "answered": len(latencies), "by_status": statuses,
            "refused_429": statuses.get(429, 0), "errors": len(errors), "error_samples": errors[:5],
            "mixed_results": len(mixed), "images_per_s": round(len(latencies) * args.num_images / wall, 2),
            "http_attempts": sum(statuses.values()),
            "latency_s": pct(latencies), "end_to_end_with_retries_s": pct(end_to_end)}


if __name__ == "__main__":
    sys.exit(main())
