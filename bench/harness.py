"""Shared measurement code for every benchmark runner (ours and the peers').

Runs inside the runner's own interpreter (our .venv or bench/.venv-peers), so it uses only the
standard library and torch. A runner module provides builders; ``main(builders)`` parses the
workload spec, builds randomly initialised models, counts FLOPs per stage with
``torch.utils.flop_counter.FlopCounterMode``, warms up, times the workload and prints one line
``BENCH_RESULT {json}`` that bench/run.py collects.

Builders (one per workload kind) return a ``Built``:
- sampling (``sample32``/``sample64``): ``run(prior_steps, decoder_steps, sr_steps)`` draws
  ``spec["images"]`` images end to end from precomputed text embeddings;
- training (``prior_train``/``decoder_train``): ``run()`` does one optimiser step.
``stages`` maps a stage name (prior, decoder, upsampler, ...) to the nn.Module(s) whose forward
calls are attributed to it, for parameter counts and FLOPs per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

SAMPLING = ("sample32", "sample64")
TRAINING = ("prior_train", "decoder_train")
WORKLOADS = SAMPLING + TRAINING


@dataclass
class Built:
    run: Callable
    stages: dict  # name -> nn.Module or list of nn.Module
    notes: dict = field(default_factory=dict)


def precision(spec: dict) -> str:
    """The workload's precision: ``"bf16"`` (``--spec '{"precision": "bf16"}'``, the ``-bf16`` systems) or ``"fp32"``."""
    value = spec.get("precision", "fp32")
    if value not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {value!r}")
    return value


def autocast(spec: dict):
    """The context every runner computes its forward passes (and losses) in: bf16 autocast on the CPU for a bf16
    spec, as ``train.mixed_precision=bf16`` does and as a peer's user would write it; nothing for fp32. The
    backward pass and the optimiser step stay outside it, as torch's AMP recipe says."""
    if precision(spec) == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def stage_modules(stages: dict) -> dict:
    return {name: (mods if isinstance(mods, (list, tuple)) else [mods]) for name, mods in stages.items()}


def count_params(stages: dict) -> dict:
    counts = {}
    for name, mods in stage_modules(stages).items():
        seen, total = set(), 0
        for module in mods:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        counts[name] = total
    return counts


def count_flops(stages: dict, fn: Callable) -> tuple[int, dict]:
    """Run ``fn`` under FlopCounterMode; return (total FLOPs, FLOPs per stage).

    Each stage's forward calls are bracketed by a wrapper that reads the running total, so the
    attribution works whatever the module names are and however the peer's loop calls them.
    Backward FLOPs (training) land in the total only.
    """
    per_stage = {name: 0 for name in stages}
    patched, depth = [], {"n": 0}
    counter = FlopCounterMode(display=False)

    def wrap(name, module):
        # patch the instance's forward (not a hook): DALLE2-pytorch calls self.forward() directly
        original = module.forward

        def forward(*args, **kwargs):
            depth["n"] += 1
            start = counter.get_total_flops()
            try:
                return original(*args, **kwargs)
            finally:
                depth["n"] -= 1
                if depth["n"] == 0:
                    per_stage[name] += counter.get_total_flops() - start

        module.forward = forward
        patched.append(module)

    for name, mods in stage_modules(stages).items():
        for module in mods:
            wrap(name, module)
    try:
        with counter:
            fn()
    finally:
        for module in patched:
            del module.forward  # back to the class's method
    return counter.get_total_flops(), per_stage


def max_rss_mib() -> float:
    """Peak resident memory of this process: VmHWM of its own address space where /proc has it
    (ru_maxrss may carry the parent's peak across fork + exec), else getrusage's maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(built: Built, spec: dict) -> dict:
    workload = spec["workload"]
    result = {"params": count_params(built.stages), "notes": built.notes}
    if workload in SAMPLING:
        steps = (spec["prior_steps"], spec["decoder_steps"], spec["sr_steps"])
        # two steps of every stage under the FLOP counter (diffusers' UnCLIPScheduler cannot
        # take one); it doubles as the warm-up. Network FLOPs are linear in the step count.
        total_2, per_stage = count_flops(built.stages, lambda: built.run(2, 2, 2))
        stage_steps = {"prior": steps[0], "decoder": steps[1], "upsampler": steps[2]}
        per_step = {s: flops // 2 for s, flops in per_stage.items()}
        flops = sum(per_step[s] * stage_steps.get(s, 1) for s in per_step)
        flops += total_2 - sum(per_stage.values())  # text encoder, schedulers, glue: once
        result["flops_per_step"] = per_step
        result["flops_total"] = flops
        times, cpu = [], []
        for _ in range(spec.get("inner_reps", 1)):
            start, start_cpu = time.perf_counter(), time.process_time()
            built.run(*steps)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    else:
        flops, per_stage = count_flops(built.stages, built.run)  # also the first warm-up step
        built.run()
        result["flops_per_step"] = per_stage
        result["flops_total"] = flops
        times, cpu = [], []
        for _ in range(spec.get("inner_reps", 2)):
            start, start_cpu = time.perf_counter(), time.process_time()
            built.run()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    result["seconds"] = statistics.median(times)
    result["seconds_all"] = times
    # CPU seconds of all threads: less sensitive than wall time to other processes on a shared machine
    result["cpu_seconds"] = statistics.median(cpu)
    result["max_rss_mib"] = max_rss_mib()
    return result


def main(builders: dict, system: str, versions: Callable[[], dict]) -> None:
    parser = argparse.ArgumentParser(description=f"benchmark runner: {system}")
    parser.add_argument("--spec", required=True, help="workload spec as JSON (written by bench/run.py)")
    parser.add_argument("--params-only", action="store_true", help="build, print parameter counts, exit")
    args = parser.parse_args()
    spec = json.loads(args.spec)
    torch.set_num_threads(int(spec.get("threads", os.cpu_count() or 1)))
    torch.manual_seed(int(spec.get("seed", 0)))
    kind = "sample" if spec["workload"] in SAMPLING else spec["workload"]
    built = builders[kind](spec)
    if args.params_only:
        result = {"params": count_params(built.stages), "notes": built.notes}
    else:
        result = measure(built, spec)
    result.update(system=system, workload=spec["workload"], versions=versions(),
                  threads=torch.get_num_threads())
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
