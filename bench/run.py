"""Benchmark unclip against diffusers' UnCLIPPipeline and DALLE2-pytorch on matched work (issue 9).

    bash bench/setup_peers.sh                       # once: the peers' virtualenv
    python bench/run.py --quick                     # smoke run, a few minutes of a quiet 2-core CPU
    python bench/run.py --reps 3                    # the full table (long on a 2-core CPU)
    python bench/run.py --workload sample32,decoder_train --systems unclip,dalle2 --reps 5

Every workload of every system runs in its own subprocess (fresh interpreter, its own peak RSS),
with our .venv's python for unclip and bench/.venv-peers' python for the peers. Repetitions
alternate the systems (A/B/C, C/B/A, ...) so that load from other processes on a shared machine
hits all of them alike; the report gives the median time and the median of the per-repetition
ratios. A matmul peak (fp32 and bf16) measured in the same run gives the utilisation.
Where bf16 is not native (no AVX512-BF16 or AMX; ``unclip.precision.native_bf16``), the bf16 rows
and the bf16 peak are skipped, and the summary says why: emulated bf16 is slower than fp32 and its
peak measurement stalls for minutes. Raw results go to bench/results/<stamp>/ (``summary.json`` and
``runs.json``, committable, with the host's CPU flags; one log per subprocess, git-ignored); the
Markdown table to docs/performance.md (``--doc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from unclip.precision import native_bf16  # noqa: E402  (the one home of "is bf16 native here")

OURS_PYTHON = Path(sys.executable)
PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"
SYSTEMS = {
    # name: (python, runner script, extra spec)
    "unclip": (OURS_PYTHON, HERE / "ours_runner.py", {}),
    "unclip-bf16": (OURS_PYTHON, HERE / "ours_runner.py", {"precision": "bf16"}),
    "diffusers": (PEERS_PYTHON, HERE / "peers" / "diffusers_runner.py", {}),
    "dalle2": (PEERS_PYTHON, HERE / "peers" / "dalle2_runner.py", {}),
    # the peers under the same bf16 autocast as ours (bench/harness.py ``autocast``): like for like
    "diffusers-bf16": (PEERS_PYTHON, HERE / "peers" / "diffusers_runner.py", {"precision": "bf16"}),
    "dalle2-bf16": (PEERS_PYTHON, HERE / "peers" / "dalle2_runner.py", {"precision": "bf16"}),
}
OURS = ("unclip", "unclip-bf16")
BF16_SYSTEMS = ("unclip-bf16", "diffusers-bf16", "dalle2-bf16")
PEERS = ("diffusers", "dalle2", "diffusers-bf16", "dalle2-bf16")
COMMON = dict(embed_dim=256, text_len=77, text_dim=256, timesteps=1000, images=4, batch=16, seed=0,
              prior_guidance=4.0, decoder_guidance=8.0)
WORKLOADS = {
    "sample32": dict(image_size=32, sr_size=64, decoder="small", upsampler="small",
                     prior_steps=25, decoder_steps=25, sr_steps=7),
    "sample64": dict(image_size=64, sr_size=256, decoder="large", upsampler="small",
                     prior_steps=25, decoder_steps=25, sr_steps=7),
    "prior_train": dict(inner_reps=3),
    "decoder_train": dict(image_size=64, decoder="large", inner_reps=2),
}
QUICK = {  # same models and resolutions, fewer steps; the decoder step on the 32 px model
    "sample32": dict(prior_steps=5, decoder_steps=5, sr_steps=2),
    "sample64": dict(prior_steps=5, decoder_steps=5, sr_steps=2),
    "prior_train": dict(inner_reps=2),
    "decoder_train": dict(image_size=32, decoder="small", inner_reps=1),
}

PEAK_CODE = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1])); n = int(sys.argv[2]); out = {}
dtypes = (("fp32", torch.float32), ("bf16", torch.bfloat16))[:2 if sys.argv[4] == "bf16" else 1]
for name, dtype in dtypes:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = best_cpu = 0.0
    for _ in range(int(sys.argv[3])):
        start, start_cpu = time.perf_counter(), time.process_time()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
        best_cpu = max(best_cpu, 2 * n**3 / (time.process_time() - start_cpu))
    out[name] = best  # FLOP per wall second
    out[name + "_cpu"] = best_cpu  # FLOP per CPU second (all threads): robust to time-slicing
print("PEAK " + json.dumps(out))
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n" + "\n".join(__doc__.split("\n\n")[1].splitlines()))
    parser.add_argument("--workload", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of: {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of: {', '.join(SYSTEMS)} (default: all)")
    parser.add_argument("--reps", type=int, default=None, help="alternating repetitions (default 3, quick 2)")
    parser.add_argument("--quick", action="store_true", help="fewer steps (5/5/2), 32 px decoder training step")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak (default 2048)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one run is abandoned")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where raw results go")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md",
                        help="Markdown report to write ('-' for none)")
    parser.add_argument("--from-summary", type=Path, nargs="+", default=None, metavar="SUMMARY_JSON",
                        help="run nothing: rewrite --doc from previous runs' summary.json files (merged in order)")
    parser.add_argument("--from-runs", type=Path, default=None, metavar="RUNS_JSON",
                        help="run nothing but the matmul peak: summarise an interrupted run's runs.json")
    args = parser.parse_args(argv)
    if args.from_summary is not None:
        return args
    args.workloads = _pick(args.workload, WORKLOADS, "--workload")
    args.system_list = _pick(args.systems, SYSTEMS, "--systems")
    if args.reps is None:
        args.reps = 2 if args.quick else 3
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if any(s in PEERS for s in args.system_list) and not PEERS_PYTHON.exists():
        parser.error(f"{PEERS_PYTHON} is missing: run 'bash bench/setup_peers.sh' first")
    return args


def _pick(value: str, known, flag: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"error: {flag} {value!r}: unknown {unknown}; choose from {', '.join(known)}")
    return names


def make_spec(workload: str, system: str, args) -> dict:
    spec = dict(COMMON, workload=workload, threads=args.threads, **WORKLOADS[workload])
    if args.quick:
        spec.update(QUICK[workload])
    spec.update(SYSTEMS[system][2])
    return spec


def env_for_run(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TQDM_DISABLE="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("VIRTUAL_ENV", None)
    return env


def run_one(system: str, spec: dict, log: Path, timeout: float) -> dict:
    python, script, _ = SYSTEMS[system]
    cmd = [str(python), str(script), "--spec", json.dumps(spec)]
    start = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, timeout=timeout,
                                  env=env_for_run(spec["threads"]), cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        f.write(proc.stdout)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line[len("BENCH_RESULT "):])
            result["wall_s"] = time.time() - start
            return result
    return {"error": f"exit {proc.returncode}, no result (see {log})"}


def bf16_skip_reason() -> str | None:
    """Why bf16 rows are not run on this host, or None where bf16 is native."""
    if native_bf16("cpu"):
        return None
    return ("skipped: bf16 is not native on this CPU (no avx512_bf16 or amx_bf16 flag); emulated bf16 is "
            "slower than fp32 and its matmul peak stalls for minutes")


def skipped_systems(systems: list[str], reason: str | None) -> dict:
    """{system: reason} for the bf16 systems that this host cannot run natively."""
    return {} if reason is None else {s: reason for s in systems if s in BF16_SYSTEMS}


def measure_peak(threads: int, size: int, repeats: int = 10, *, bf16: bool = True) -> dict:
    """Best matmul FLOP/s (wall and per CPU-second): fp32, and bf16 when ``bf16``."""
    cmd = [str(OURS_PYTHON), "-c", PEAK_CODE, str(threads), str(size), str(repeats), "bf16" if bf16 else "fp32"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env_for_run(threads), check=True).stdout
    return json.loads(out.split("PEAK ", 1)[1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_summary is not None:
        summary = report.merge([json.loads(Path(p).read_text()) for p in args.from_summary])
        args.doc.write_text(report.markdown(summary, analysis=HERE / "analysis.md"))
        print(f"wrote {args.doc} from {', '.join(map(str, args.from_summary))}")
        return 0
    if args.from_runs is not None:
        return summarise_runs_file(args)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out_dir = args.results / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"results in {out_dir}", flush=True)
    reason = bf16_skip_reason()
    args.skipped = skipped_systems(args.system_list, reason)
    for system, why in args.skipped.items():
        print(f"{system}: {why}", flush=True)
    peaks = [measure_peak(args.threads, args.peak_size, bf16=reason is None)]
    print(f"matmul peak: fp32 {peaks[0]['fp32'] / 1e9:.1f} GFLOP/s"
          + (f", bf16 {peaks[0]['bf16'] / 1e9:.1f} GFLOP/s" if "bf16" in peaks[0] else ""), flush=True)
    runs = []  # one entry per subprocess
    for rep in range(args.reps):
        for workload in args.workloads:
            order = args.system_list if rep % 2 == 0 else list(reversed(args.system_list))
            for system in (s for s in order if s not in args.skipped):
                spec = make_spec(workload, system, args)
                log = out_dir / f"{workload}-{system}-{rep}.log"
                result = run_one(system, spec, log, args.timeout)
                result.update(system=system, workload=workload, rep=rep, spec=spec)
                runs.append(result)
                shown = f"{result['seconds']:.2f} s" if "seconds" in result else result["error"]
                print(f"rep {rep} {workload:14s} {system:12s} {shown}", flush=True)
                (out_dir / "runs.json").write_text(json.dumps(runs, indent=1))
    peaks.append(measure_peak(args.threads, args.peak_size, bf16=reason is None))
    peak = {k: max(p[k] for p in peaks) for k in peaks[0]}
    summary = summarise(runs, args, peak)
    summary.update(command=command, stamp=stamp, peaks=peaks, peak=peak, results_dir=_shown(out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report.console(summary), flush=True)
    if str(args.doc) != "-":
        args.doc.write_text(report.markdown(summary, analysis=HERE / "analysis.md"))
        print(f"wrote {args.doc}", flush=True)
    return 0


def summarise_runs_file(args) -> int:
    """Summary (and doc) of an interrupted run: workloads, systems and reps are read from runs.json."""
    runs = json.loads(args.from_runs.read_text())
    args.workloads = list(dict.fromkeys(r["workload"] for r in runs))
    args.system_list = list(dict.fromkeys(r["system"] for r in runs))
    args.reps = max(r["rep"] for r in runs) + 1
    args.quick = any(r["spec"].get(k) != v for r in runs for k, v in WORKLOADS[r["workload"]].items()
                     if k in r["spec"])
    out_dir = args.from_runs.resolve().parent
    previous = out_dir / "summary.json"
    old = json.loads(previous.read_text()) if previous.exists() else {}
    reason = bf16_skip_reason()
    args.skipped = skipped_systems(args.system_list, reason)
    peaks = old.get("peaks", [])
    peaks.append(measure_peak(args.threads, args.peak_size, bf16=reason is None))  # also the per-CPU-second peak
    peak = {k: max(p.get(k, 0.0) for p in peaks) for k in peaks[-1]}
    summary = summarise(runs, args, peak)
    summary.update(command=old.get("command", f"python bench/run.py  # summarised with --from-runs {args.from_runs}"),
                   stamp=out_dir.name, peaks=peaks, peak=peak, results_dir=_shown(out_dir))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report.console(summary), flush=True)
    if str(args.doc) != "-":
        args.doc.write_text(report.markdown(summary, analysis=HERE / "analysis.md"))
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (--results may point elsewhere)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def summarise(runs: list[dict], args, peak: dict) -> dict:
    """Median time per (workload, system), paired per-repetition ratios ours vs each peer."""
    rows = {}
    for workload in args.workloads:
        for system in args.system_list:
            mine = [r for r in runs if r["workload"] == workload and r["system"] == system and "seconds" in r]
            errors = [r["error"] for r in runs if r["workload"] == workload and r["system"] == system and "error" in r]
            skipped = getattr(args, "skipped", {}).get(system)
            if not mine:
                rows[(workload, system)] = {"error": skipped or (errors[0] if errors else "not run")}
                continue
            seconds = statistics.median(r["seconds"] for r in mine)
            flops = mine[0]["flops_total"]
            rows[(workload, system)] = {
                "seconds": seconds, "all": [r["seconds"] for r in mine], "flops": flops,
                "flops_per_step": mine[0]["flops_per_step"], "params": mine[0]["params"], "notes": mine[0]["notes"],
                "max_rss_mib": max(r["max_rss_mib"] for r in mine), "versions": mine[0]["versions"],
                "gflops_per_s": flops / seconds / 1e9, "util_fp32": flops / seconds / peak["fp32"],
                "util_bf16": flops / seconds / peak["bf16"] if "bf16" in peak else None,
                "spec": mine[0]["spec"], "errors": errors,
            }
            if all("cpu_seconds" in r for r in mine):
                cpu = statistics.median(r["cpu_seconds"] for r in mine)
                rows[(workload, system)]["cpu_seconds"] = cpu
                if "fp32_cpu" in peak:  # utilisation per CPU second: what time-slicing cannot dilute
                    rows[(workload, system)].update(
                        util_cpu_fp32=flops / cpu / peak["fp32_cpu"],
                        util_cpu_bf16=flops / cpu / peak["bf16_cpu"] if "bf16_cpu" in peak else None)
    ratios = {}
    for workload in args.workloads:
        for ours in (s for s in args.system_list if s in OURS):
            for peer in (s for s in args.system_list if s in PEERS):
                if report.precision_of(peer) == "bf16" and report.precision_of(ours) != "bf16":
                    continue  # our fp32 is compared with the peers' fp32 only
                paired, paired_cpu = [], []
                for rep in range(args.reps):
                    o = [r for r in runs if (r["workload"], r["system"], r["rep"]) == (workload, ours, rep)]
                    p = [r for r in runs if (r["workload"], r["system"], r["rep"]) == (workload, peer, rep)]
                    if o and p and "seconds" in o[0] and "seconds" in p[0]:
                        paired.append(p[0]["seconds"] / o[0]["seconds"])  # > 1: ours is faster
                        if "cpu_seconds" in o[0] and "cpu_seconds" in p[0]:
                            paired_cpu.append(p[0]["cpu_seconds"] / o[0]["cpu_seconds"])
                if paired:
                    ratios[(workload, ours, peer)] = {"median": statistics.median(paired), "all": paired}
                if paired_cpu:
                    ratios[(workload, ours, peer)]["cpu_median"] = statistics.median(paired_cpu)
    return {"rows": {f"{w}|{s}": v for (w, s), v in rows.items()},
            "ratios": {f"{w}|{o}|{p}": v for (w, o, p), v in ratios.items()},
            "workloads": args.workloads, "systems": args.system_list, "reps": args.reps, "quick": args.quick,
            "threads": args.threads, "peak_size": args.peak_size, "hardware": report.hardware(),
            "native_bf16": native_bf16("cpu"), "skipped": dict(getattr(args, "skipped", {})),
            "peers_versions": peer_versions()}


def peer_versions() -> dict:
    if not PEERS_PYTHON.exists():
        return {}
    code = ("import json; from importlib.metadata import version as v; "
            "print(json.dumps({p: v(p) for p in ('torch', 'diffusers', 'transformers', 'dalle2-pytorch')}))")
    out = subprocess.run([str(PEERS_PYTHON), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


if __name__ == "__main__":
    sys.exit(main())
