"""Turn a bench/run.py summary into the console table and docs/performance.md."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prior", "decoder", "upsampler")
TARGETS = {"end_to_end": 2.0, "decoder_train_vs_dalle2": 1.5, "decoder_train_bf16_util": 0.40}


# the instruction-set flags that decide which kernels run (AVX512-BF16 / AMX: native bf16)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict:
    """{flag: present} for CPU_FLAGS, from /proc/cpuinfo ({} where there is none, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
    return {flag: flag in flags for flag in CPU_FLAGS}


def hardware() -> dict:
    """The host, for every summary JSON: CPU model, cores, CPU flags, memory, Python, unclip commit."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "cpu_flags": cpu_flags()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
        info["cpu"] = info.get("Model name", info["cpu"])
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["unclip_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                               text=True, cwd=ROOT).stdout.strip()
    except OSError:
        pass
    return info


def merge(summaries: list[dict]) -> dict:
    """One summary from several runs (e.g. the quick table plus a separate sample64 run).

    Each row keeps the utilisation computed against its own run's peak; later runs win on clashes.
    """
    summaries = [_tag_quick(s) for s in summaries] if len(summaries) > 1 else summaries
    merged = dict(summaries[0])
    for key in ("workloads", "systems"):
        merged[key] = list(dict.fromkeys(v for s in summaries for v in s[key]))
    for key in ("rows", "ratios"):
        merged[key] = {k: v for s in summaries for k, v in s[key].items()}
    merged["command"] = "\n".join(s["command"] for s in summaries)
    merged["results_dir"] = "/, ".join(s["results_dir"] for s in summaries)
    merged["stamp"] = ", ".join(s["stamp"] for s in summaries)
    merged["peaks"] = [p for s in summaries for p in s["peaks"]]
    merged["peak"] = {k: max(s["peak"].get(k, 0.0) for s in summaries) for k in summaries[-1]["peak"]}
    merged["reps"] = "/".join(str(s["reps"]) for s in summaries)
    return merged


def _tag_quick(summary: dict) -> dict:
    """Rename a --quick run's workloads ``NAME-quick`` so they sit beside full runs of NAME."""
    if not summary.get("quick"):
        return summary
    name = lambda w: f"{w}-quick"  # noqa: E731
    tagged = dict(summary, workloads=[name(w) for w in summary["workloads"]])
    tagged["rows"] = {f"{name(k.split('|')[0])}|{k.split('|', 1)[1]}": v for k, v in summary["rows"].items()}
    tagged["ratios"] = {f"{name(k.split('|')[0])}|{k.split('|', 1)[1]}": v for k, v in summary["ratios"].items()}
    return tagged


def _base(workload: str) -> str:
    return workload.removesuffix("-quick")


def _fmt_params(params: dict, notes: dict) -> str:
    parts = []
    for stage in STAGES:
        if stage in params:
            value = params[stage] / 1e6
            twice = stage == "upsampler" and "upsampler_params" in notes
            parts.append(f"{stage[0].upper()} {value / 2:.2f}M×2" if twice else f"{stage[0].upper()} {value:.2f}M")
    return ", ".join(parts)


def _flags(hw: dict) -> str:
    flags = hw.get("cpu_flags")
    if not flags:
        return "not recorded"
    return ", ".join(name for name, present in flags.items() if present) or "none of " + ", ".join(flags)


def _row(summary: dict, workload: str, system: str) -> dict | None:
    return summary["rows"].get(f"{workload}|{system}")


def _ratio(summary: dict, workload: str, ours: str, peer: str) -> float | None:
    value = summary["ratios"].get(f"{workload}|{ours}|{peer}")
    return None if value is None else value["median"]


def _cpu_ratio(summary: dict, workload: str, ours: str, peer: str) -> str:
    value = summary["ratios"].get(f"{workload}|{ours}|{peer}", {})
    return f" (CPU time: {value['cpu_median']:.2f}×)" if "cpu_median" in value else ""


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    """A utilisation as a percentage; "–" where its peak was not measured (bf16 not native)."""
    return "–" if value is None else f"{100 * value:.1f}"


def _gflops(value: float | None) -> str:
    return "–" if value is None else f"{value / 1e9:.1f}"


def console(summary: dict) -> str:
    lines = [f"{'workload':14s} {'system':12s} {'median s':>9s} {'GFLOP/s':>8s} {'RSS MiB':>8s}"]
    for workload in summary["workloads"]:
        for system in summary["systems"]:
            row = _row(summary, workload, system)
            if row is None or "error" in row:
                lines.append(f"{workload:14s} {system:12s} {row['error'] if row else 'not run'}")
                continue
            lines.append(f"{workload:14s} {system:12s} {row['seconds']:9.2f} {row['gflops_per_s']:8.1f} "
                         f"{row['max_rss_mib']:8.0f}")
    for key, value in summary["ratios"].items():
        workload, ours, peer = key.split("|")
        lines.append(f"{workload}: {ours} vs {peer}: {value['median']:.2f}x faster (per rep: "
                     + ", ".join(f"{v:.2f}" for v in value["all"]) + ")")
    return "\n".join(lines)


def precision_of(system: str) -> str:
    """A benchmark system's precision, from its name (``unclip-bf16``, ``diffusers-bf16``: bf16)."""
    return "bf16" if system.endswith("-bf16") else "fp32"


PEER_LIBRARIES = ("diffusers", "dalle2")


def like_peer(summary: dict, workload: str, ours: str, library: str) -> str:
    """The system of ``library`` to compare ``ours`` with: the same precision where that peer ran in this
    summary (``diffusers-bf16`` for ``unclip-bf16``), else the library's fp32 row (flagged by ``_unlike``)."""
    same = library if precision_of(ours) == "fp32" else f"{library}-{precision_of(ours)}"
    return same if f"{workload}|{ours}|{same}" in summary["ratios"] else library


def _unlike(summary: dict, ours: str, peer: str) -> str:
    """A warning where a ratio compares two precisions (our bf16 with a peer's fp32)."""
    if precision_of(ours) == precision_of(peer):
        return ""
    return f" (ours {precision_of(ours)}, {peer} {precision_of(peer)}: not like for like)"


def _targets(summary: dict) -> list[str]:
    lines = ["| target | measured (median ratio or utilisation) | met |", "|---|---|---|"]

    def verdict(value, goal):
        return "–" if value is None else ("yes" if value >= goal else "**no**")

    for workload in (w for w in summary["workloads"] if _base(w) in ("sample32", "sample64")):
        for ours in ("unclip", "unclip-bf16"):
            for peer in (like_peer(summary, workload, ours, lib) for lib in PEER_LIBRARIES):
                value = _ratio(summary, workload, ours, peer)
                if value is not None:
                    lines.append(f"| end-to-end {workload}: {ours} ≥ 2× faster than {peer}{_unlike(summary, ours, peer)} "
                                 f"| {value:.2f}×"
                                 f"{_cpu_ratio(summary, workload, ours, peer)} | "
                                 f"{verdict(value, TARGETS['end_to_end'])} |")
    trains = [w for w in summary["workloads"] if _base(w) == "decoder_train"]
    for workload in trains:
        for ours in ("unclip", "unclip-bf16"):
            peer = like_peer(summary, workload, ours, "dalle2")
            value = _ratio(summary, workload, ours, peer)
            if value is not None:
                lines.append(f"| {workload} step: {ours} ≥ 1.5× faster than {peer}{_unlike(summary, ours, peer)} "
                             f"| {value:.2f}×"
                             f"{_cpu_ratio(summary, workload, ours, peer)} | "
                             f"{verdict(value, TARGETS['decoder_train_vs_dalle2'])} |")
    for workload, ours in ((w, o) for w in trains for o in ("unclip-bf16", "unclip")):
        row = _row(summary, workload, ours)
        if row and "error" not in row and row.get("util_bf16") is not None:
            best = max(row["util_bf16"], row.get("util_cpu_bf16") or 0.0)
            per_cpu = (f"; per CPU second: {_pct(row['util_cpu_bf16'])}% of bf16, "
                       f"{_pct(row['util_cpu_fp32'])}% of fp32" if "util_cpu_bf16" in row else "")
            lines.append(f"| {workload}: {ours} ≥ 40% of the bf16 matmul peak | wall: {_pct(row['util_bf16'])}% "
                         f"of bf16, {_pct(row['util_fp32'])}% of fp32{per_cpu} | "
                         f"{verdict(best, TARGETS['decoder_train_bf16_util'])} |")
        elif row and "error" not in row:
            lines.append(f"| {workload}: {ours} ≥ 40% of the bf16 matmul peak | not measured: bf16 is not native "
                         "on this host | – |")
    if len(lines) == 2:
        lines.append("| (no targeted workload in this run) | | |")
    return lines


def _results_table(summary: dict) -> list[str]:
    lines = ["| workload | system | parameters | median s | all runs (s) | GFLOP per run | GFLOP/s | "
             "% fp32 peak | % bf16 peak | % fp32 / bf16 peak per CPU-s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for workload in summary["workloads"]:
        for system in summary["systems"]:
            row = _row(summary, workload, system)
            if row is None:
                continue  # a merged run that did not include this system
            if "error" in row:
                lines.append(f"| {workload} | {system} | | {row['error']} | | | | | | | |")
                continue
            runs = ", ".join(f"{s:.1f}" for s in row["all"])
            if "cpu_seconds" in row:
                runs += f" (CPU {row['cpu_seconds']:.1f})"
            lines.append(f"| {workload} | {system} | {_fmt_params(row['params'], row['notes'])} | {row['seconds']:.2f} | "
                         f"{runs} | {row['flops'] / 1e9:.1f} | {row['gflops_per_s']:.1f} | {100 * row['util_fp32']:.1f} | "
                         f"{_pct(row['util_bf16'])} | {_cpu_util(row)} | {row['max_rss_mib']:.0f} |")
    return lines


def _cpu_util(row: dict) -> str:
    if "util_cpu_fp32" not in row:
        return "–"
    return f"{_pct(row['util_cpu_fp32'])} / {_pct(row.get('util_cpu_bf16'))}"


def _ratio_table(summary: dict) -> list[str]:
    """Each of our rows against each peer library at the same precision where the peer ran in it."""
    libraries = [lib for lib in PEER_LIBRARIES if any(s.split("-")[0] == lib for s in summary["systems"])]
    lines = ["| workload | ours | " + " | ".join(f"speed-up vs {lib} (per rep)" for lib in libraries) + " |",
             "|---|---|" + "---|" * len(libraries)]
    for workload in summary["workloads"]:
        for ours in (s for s in summary["systems"] if s.startswith("unclip")):
            cells = []
            for peer in (like_peer(summary, workload, ours, lib) for lib in libraries):
                value = summary["ratios"].get(f"{workload}|{ours}|{peer}")
                cpu = f"; CPU time {value['cpu_median']:.2f}×" if value and "cpu_median" in value else ""
                cells.append("–" if value is None else
                             f"**{value['median']:.2f}×** ({', '.join(f'{v:.2f}' for v in value['all'])}{cpu}) "
                             f"vs `{peer}`{_unlike(summary, ours, peer)}")
            lines.append(f"| {workload} | {ours} | " + " | ".join(cells) + " |")
    return lines


def _param_table(summary: dict) -> list[str]:
    """Per network: each system's parameter count and its deviation from DALLE2-pytorch's."""
    lines = ["| workload | network | " + " | ".join(summary["systems"]) + " | largest deviation from dalle2 |",
             "|---|---|" + "---|" * (len(summary["systems"]) + 1)]
    seen = set()
    for workload in summary["workloads"]:
        for stage in STAGES:
            counts = {}
            for system in summary["systems"]:
                row = _row(summary, workload, system)
                if row and "params" in row and stage in row["params"]:
                    twice = stage == "upsampler" and "upsampler_params" in row["notes"]
                    counts[system] = row["params"][stage] / (2 if twice else 1)
            key = (stage, tuple(sorted(counts.items())))
            if not counts or key in seen:
                continue
            seen.add(key)
            ref = counts.get("dalle2")
            dev = "–" if ref is None else f"{100 * max(abs(c / ref - 1) for c in counts.values()):.1f}%"
            cells = [f"{counts[s] / 1e6:.2f}M" if s in counts else "" for s in summary["systems"]]
            lines.append(f"| {workload} | {stage} | " + " | ".join(cells) + f" | {dev} |")
    return lines


def _flops_table(summary: dict) -> list[str]:
    lines = ["| workload | system | prior GFLOP/step | decoder GFLOP/step | upsampler GFLOP/step |", "|---|---|---|---|---|"]
    for workload in summary["workloads"]:
        for system in summary["systems"]:
            row = _row(summary, workload, system)
            if row is None or "error" in row:
                continue
            per = row["flops_per_step"]
            cells = [f"{per[s] / 1e9:.2f}" if s in per else "" for s in STAGES]
            lines.append(f"| {workload} | {system} | " + " | ".join(cells) + " |")
    return lines


def _spec_lines(summary: dict) -> list[str]:
    lines = []
    for workload in summary["workloads"]:
        row = next((r for s in summary["systems"] if (r := _row(summary, workload, s)) and "spec" in r), None)
        if row is None:
            continue
        spec = row["spec"]
        quick = " (`--quick`)" if workload.endswith("-quick") else ""
        if workload.startswith("sample"):
            lines.append(f"- `{workload}`: {spec['images']} images, {spec['image_size']}→{spec['sr_size']} px, "
                         f"{spec['prior_steps']} prior / {spec['decoder_steps']} decoder / {spec['sr_steps']} upsampler "
                         f"steps, guidance {spec['prior_guidance']} (prior) and {spec['decoder_guidance']} (decoder), "
                         f"none on the upsampler; decoder size `{spec['decoder']}`{quick}.")
        elif workload.startswith("prior_train"):
            lines.append(f"- `{workload}`: one AdamW step of the prior at batch {spec['batch']} "
                         f"(median of {spec.get('inner_reps', 1)} timed steps after a warm-up){quick}.")
        else:
            lines.append(f"- `{workload}`: one AdamW step of the `{spec['decoder']}` decoder at {spec['image_size']} px, "
                         f"batch {spec['batch']} (median of {spec.get('inner_reps', 1)} timed steps after a warm-up){quick}.")
    return lines


def markdown(summary: dict, analysis: Path | None = None) -> str:
    hw, pv, peak = summary["hardware"], summary["peers_versions"], summary["peak"]
    ours_versions = next((r["versions"] for k, r in summary["rows"].items() if k.split("|")[1].startswith("unclip")
                          and "versions" in r), {})
    out = [
        "# Performance",
        "",
        "unclip against the two implementations users would pick instead — diffusers' `UnCLIPPipeline` and",
        "DALLE2-pytorch — on the same work, measured in one run (issue 9). This page is written by",
        "`python bench/run.py`; edit `bench/analysis.md` for the closing notes, not this file.",
        "",
        "## Reproduce",
        "",
        "```bash",
        "bash bench/setup_peers.sh      # once: bench/.venv-peers with diffusers and dalle2-pytorch 1.15.6",
        summary["command"],
        "```",
        "",
        f"Raw results: `{summary['results_dir']}/` (`summary.json` and `runs.json` are committed; logs are not).",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {hw.get('cpu')} ({hw.get('CPU(s)', hw.get('cores'))} CPUs, {hw.get('Thread(s) per core', '?')} "
        f"thread(s) per core{', ' + hw['Hypervisor vendor'] + ' VM' if 'Hypervisor vendor' in hw else ''}), "
        f"{hw.get('memory_gib', '?')} GiB memory; {summary['threads']} torch threads per run.",
        f"- Measured matmul peak ({summary.get('peak_size', 2048)}² matrices, best of 10, max of before/after the "
        f"runs, on the same machine): fp32 **{peak['fp32'] / 1e9:.1f} GFLOP/s**, bf16 "
        f"**{_gflops(peak.get('bf16'))} GFLOP/s** (each measurement: "
        + "; ".join(f"{p['fp32'] / 1e9:.0f} / {_gflops(p.get('bf16'))}" for p in summary.get("peaks", [])) + ")"
        + (f"; per CPU-second of all threads (robust to time-slicing by other processes): fp32 "
           f"**{peak['fp32_cpu'] / 1e9:.1f}**, bf16 **{_gflops(peak.get('bf16_cpu'))} GFLOP/s**." if "fp32_cpu" in peak
           else "."),
        f"- CPU flags: {_flags(hw)}.",
        *(f"- {system}: {why}." for system, why in summary.get("skipped", {}).items()),
        f"- unclip {ours_versions.get('unclip', '?')} (commit {hw.get('unclip_commit', '?')}), torch "
        f"{ours_versions.get('torch', '?')}, Python {hw.get('python')}.",
        f"- Peers (bench/.venv-peers): diffusers {pv.get('diffusers', '?')}, transformers {pv.get('transformers', '?')}, "
        f"dalle2-pytorch {pv.get('dalle2-pytorch', '?')}, torch {pv.get('torch', '?')}.",
        f"- Run: {summary['reps']} alternating repetitions{' (--quick)' if summary['quick'] and '/' not in str(summary['reps']) else ''}, "
        f"started {summary['stamp']} UTC.",
        "",
        "## Workloads",
        "",
        *_spec_lines(summary),
        "",
        "## Speed-up of unclip (median of the per-repetition ratios; > 1 means unclip is faster)",
        "",
        "Each cell names the peer row it divides by: `unclip` against the peers in fp32, `unclip-bf16` against",
        "the peers under the same bf16 autocast (`diffusers-bf16`, `dalle2-bf16`) where they ran; a cell that",
        "compares two precisions says so.",
        "",
        *_ratio_table(summary),
        "",
        "## Targets",
        "",
        *_targets(summary),
        "",
        "## All results",
        "",
        "Parameters: P = prior, D = decoder (diffusers: UNet + text projection), U = upsampler (diffusers has two",
        "super-resolution UNets, *first* and *last*, each matched to the others' one; it runs one of them per",
        "step, *last* only on the final step). GFLOP are counted by",
        "`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; not norms or",
        "element-wise ops), so utilisation is a lower bound.",
        "",
        *_results_table(summary),
        "",
        "### Parameter counts per network (diffusers' upsampler: each of its two UNets)",
        "",
        *_param_table(summary),
        "",
        "### FLOPs per step (forward passes, classifier-free guidance included)",
        "",
        *_flops_table(summary),
        "",
        "## Method",
        "",
        "- Every workload of every system runs in a fresh subprocess (`resource.getrusage` max RSS is per",
        "  workload). Models are randomly initialised; text conditioning is precomputed (random CLIP",
        "  embeddings and 77 token states of width 256), so no text encoder is timed except diffusers' tiny",
        "  one, which its pipeline runs once for the empty unconditional prompt.",
        "- The machine is shared: other engineers' tests and trainings can take the same 2 cores during a run",
        "  (the Analysis says how loaded it was). Absolute seconds vary between runs; the systems run",
        "  alternately (A/B/C, then C/B/A, ...), and the ratios are medians of per-repetition ratios, which is",
        "  what makes them comparable. The same holds for the matmul peak, measured before and after.",
        "- Each run also records its CPU time (`time.process_time()`, all threads). When other processes take",
        "  the cores, wall time grows but CPU time mostly does not, so CPU-time ratios and utilisation per",
        "  CPU-second (against the matmul peak per CPU-second) are given beside the wall-time ones where",
        "  recorded. They are not immune: cache and memory-bandwidth contention and OpenMP spin-waiting remain.",
        "- Sampling: a 2-step pass of every stage under the FLOP counter doubles as the warm-up; then one",
        "  timed end-to-end call. Training: a counted step, a warm-up step, then the median of timed steps.",
        "- Matched work: same resolutions, steps and guidance scales; one prior sample per caption (unclip's",
        "  pipeline defaults to best-of-2, disabled here); guidance on the prior and decoder, not the upsampler.",
        "  Samplers differ as each library ships them: unclip DDIM (batched CFG), diffusers `UnCLIPScheduler`",
        "  (batched CFG), DALLE2-pytorch its DDIM loops (CFG as two forwards).",
        "- DALLE2-pytorch is installed without torchvision; `bench/peers/tv_stub.py` stands in for the",
        "  torchvision names it imports (see bench/README.md). Nothing it stubs is called in these workloads.",
        "",
    ]
    if analysis is not None and Path(analysis).is_file():
        out += ["## Analysis", "", Path(analysis).read_text().strip(), ""]
    return "\n".join(out)
