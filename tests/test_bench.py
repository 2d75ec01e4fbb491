"""The benchmark (bench/) at 1-2 steps: every runner answers, bf16 rows are skipped where bf16 is
emulated, ratios pair repetitions, and the report renders (issue 23: the bench broke unnoticed)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY = dict(embed_dim=32, text_len=8, text_dim=32, timesteps=100, images=2, batch=4, seed=0, threads=1,
            prior_guidance=4.0, decoder_guidance=8.0)
SPECS = {  # the --quick models (the 32 px `small` decoder), 1-2 steps
    "sample32": dict(image_size=32, sr_size=64, decoder="small", upsampler="small",
                     prior_steps=2, decoder_steps=2, sr_steps=2),  # diffusers' scheduler needs 2
    "prior_train": dict(inner_reps=1),
    "decoder_train": dict(image_size=32, decoder="small", inner_reps=1),
}


def _load(name: str, path: Path):
    """A bench/ script as a module (bench/ is scripts, not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_run():
    return _load("bench_run", BENCH / "run.py")


def _spec(workload: str, **extra) -> dict:
    return dict(TINY, workload=workload, **SPECS[workload], **extra)


def _check(result: dict, workload: str) -> None:
    assert result["seconds"] > 0 and result["cpu_seconds"] > 0 and result["flops_total"] > 0
    stages = ("prior", "decoder", "upsampler") if workload == "sample32" else (workload.split("_")[0],)
    for stage in stages:
        assert result["params"][stage] > 1e6 and result["flops_per_step"][stage] > 0, stage


def _needs_diffusers():
    pytest.importorskip("diffusers", reason="diffusers is in the test extras; not installed here")
    pytest.importorskip("transformers", reason="the diffusers runner builds a tiny CLIP text model (transformers)")


RUNNERS = {"unclip": BENCH / "ours_runner.py", "diffusers": BENCH / "peers" / "diffusers_runner.py"}


@pytest.mark.slow
def test_our_runner_end_to_end_through_run_py(bench_run, tmp_path):
    """One sampling run as bench/run.py starts it: a subprocess that prints BENCH_RESULT."""
    log = tmp_path / "unclip.log"
    result = bench_run.run_one("unclip", _spec("sample32"), log, timeout=300)
    assert "error" not in result, log.read_text()[-3000:]
    assert result["system"] == "unclip" and result["workload"] == "sample32" and result["threads"] == 1
    assert result["notes"]["precision"] == "fp32"
    _check(result, "sample32")


def _measure_in_process(system: str, workload: str, **extra) -> dict:
    """A runner's workload in this process (the peers' runner: our interpreter stands in for
    bench/.venv-peers, which pins the same torch; diffusers is in the test extras)."""
    import torch

    if system == "diffusers":
        _needs_diffusers()
    runner = _load(f"bench_{system}_runner", RUNNERS[system])
    spec = _spec(workload, **extra)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kind = "sample" if workload.startswith("sample") else workload
        result = sys.modules["harness"].measure(runner.BUILDERS[kind](spec), spec)
    finally:
        torch.set_num_threads(before)
    _check(result, workload)
    return result


@pytest.mark.parametrize("system", list(RUNNERS))
@pytest.mark.parametrize("workload", ["sample32", "prior_train", "decoder_train"])
def test_runner_workloads(system, workload):
    result = _measure_in_process(system, workload)
    if system == "diffusers" and workload == "sample32":
        # each super-resolution step runs ONE UNet (super_res_first; super_res_last on the last step),
        # though both UNets' parameters are counted
        assert result["notes"]["upsampler_params"] == "first+last UNets counted together"


def test_our_bf16_sampling_where_bf16_is_native():
    from unclip.precision import native_bf16

    if not native_bf16("cpu"):
        pytest.skip("bf16 is not native on this CPU: bench/run.py skips the unclip-bf16 rows here too")
    assert _measure_in_process("unclip", "sample32", precision="bf16")["notes"]["precision"] == "bf16"


def test_dalle2_runner(bench_run, tmp_path, monkeypatch):
    pytest.importorskip("dalle2_pytorch", reason="DALLE2-pytorch is not in the test extras (bench/setup_peers.sh "
                                                 "installs it in bench/.venv-peers)")
    _, script, system_spec = bench_run.SYSTEMS["dalle2"]
    monkeypatch.setitem(bench_run.SYSTEMS, "dalle2", (Path(sys.executable), script, system_spec))
    result = bench_run.run_one("dalle2", _spec("sample32"), tmp_path / "dalle2.log", timeout=300)
    assert "error" not in result, (tmp_path / "dalle2.log").read_text()[-3000:]
    _check(result, "sample32")


def test_bf16_rows_are_skipped_where_bf16_is_emulated(bench_run, monkeypatch):
    monkeypatch.setattr(bench_run, "native_bf16", lambda device: False)
    reason = bench_run.bf16_skip_reason()
    assert "not native" in reason and "avx512_bf16" in reason
    assert bench_run.skipped_systems(["unclip", "unclip-bf16", "diffusers"], reason) == {"unclip-bf16": reason}
    monkeypatch.setattr(bench_run, "native_bf16", lambda device: True)
    assert bench_run.bf16_skip_reason() is None and bench_run.skipped_systems(["unclip-bf16"], None) == {}


def test_peak_without_bf16_measures_fp32_only(bench_run):
    peak = bench_run.measure_peak(1, 64, repeats=1, bf16=False)
    assert sorted(peak) == ["fp32", "fp32_cpu"] and peak["fp32"] > 0


def _runs(table):
    """runs.json rows from {(workload, system, rep): seconds or None (an error)}."""
    runs = []
    for (workload, system, rep), seconds in table.items():
        if seconds is None:
            runs.append({"workload": workload, "system": system, "rep": rep, "error": "exit 1"})
            continue
        runs.append({"workload": workload, "system": system, "rep": rep, "seconds": seconds,
                     "cpu_seconds": seconds / 2, "flops_total": 4e9, "flops_per_step": {"decoder": 1e9},
                     "params": {"decoder": 5e6}, "notes": {}, "max_rss_mib": 100.0, "versions": {},
                     "spec": _spec(workload)})
    return runs


def test_ratios_pair_repetitions(bench_run):
    # rep 0 is slow for both (load), rep 1 quiet, rep 2 the peer failed: ratios are per repetition,
    # peer / ours, over the repetitions where both ran, and their median is reported (not the ratio
    # of medians, which load would skew)
    table = {("sample32", "unclip", 0): 4.0, ("sample32", "diffusers", 0): 8.0,
             ("sample32", "unclip", 1): 1.0, ("sample32", "diffusers", 1): 3.0,
             ("sample32", "unclip", 2): 1.0, ("sample32", "diffusers", 2): None,
             ("sample32", "unclip", 3): 2.0, ("sample32", "diffusers", 3): 5.0}
    args = SimpleNamespace(workloads=["sample32"], system_list=["unclip", "unclip-bf16", "diffusers"], reps=4,
                           quick=True, threads=2, peak_size=64,
                           skipped={"unclip-bf16": "skipped: bf16 is not native on this CPU"})
    summary = bench_run.summarise(_runs(table), args, {"fp32": 1e10, "fp32_cpu": 1e10})
    ratio = summary["ratios"]["sample32|unclip|diffusers"]
    assert ratio["all"] == [2.0, 3.0, 2.5] and ratio["median"] == 2.5 and ratio["cpu_median"] == 2.5
    assert ratio["median"] != statistics.median([8, 3, 5]) / statistics.median([4, 1, 1, 2])
    assert summary["rows"]["sample32|diffusers"]["errors"] == ["exit 1"]
    assert summary["rows"]["sample32|unclip"]["seconds"] == 1.5
    # no bf16 peak on this host: bf16 utilisation is None, the skipped system says why
    assert summary["rows"]["sample32|unclip"]["util_bf16"] is None
    assert summary["rows"]["sample32|unclip-bf16"] == {"error": "skipped: bf16 is not native on this CPU"}
    assert "sample32|unclip-bf16|diffusers" not in summary["ratios"]
    # the host's CPU flags are in every summary
    flags = summary["hardware"]["cpu_flags"]
    if Path("/proc/cpuinfo").is_file():
        assert set(flags) >= {"avx2", "avx512_bf16", "amx_bf16"} and all(isinstance(v, bool) for v in flags.values())
    assert summary["skipped"] == args.skipped and isinstance(summary["native_bf16"], bool)
    json.dumps(summary)  # it is written as summary.json

    import report

    summary.update(command="python bench/run.py --quick", stamp="test", peaks=[{"fp32": 1e10}],
                   peak={"fp32": 1e10, "fp32_cpu": 1e10}, results_dir="bench/results/test")
    text = report.markdown(summary)
    assert "| sample32 | unclip | **2.50×** (2.00, 3.00, 2.50; CPU time 2.50×)" in text
    assert "skipped: bf16 is not native" in text and "CPU flags:" in text


def test_peer_bf16_rows_run_their_forward_passes_in_bf16():
    """diffusers-bf16 is the same work as diffusers, its networks under bf16 autocast (planted bug: a runner that
    ignores the spec's precision leaves the decoder's output fp32 and fails here)."""
    import torch

    _needs_diffusers()
    runner = _load("bench_diffusers_runner", RUNNERS["diffusers"])
    harness = sys.modules["harness"]
    for precision, expected in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        spec = _spec("decoder_train", precision=precision)
        built = runner.BUILDERS["decoder_train"](spec)
        dtypes = []
        handle = built.stages["decoder"][0].register_forward_hook(lambda m, i, out: dtypes.append(out.sample.dtype))
        built.run()
        handle.remove()
        assert dtypes == [expected] and built.notes["precision"] == precision
    # sampling: every network under autocast, the pipeline's glue in fp32 (autocast around the whole call fails:
    # diffusers' antialiased bicubic upscaling has no bf16 CPU kernel)
    spec = _spec("sample32", precision="bf16")
    built = runner.BUILDERS["sample"](spec)
    dtypes = []
    built.stages["upsampler"][0].register_forward_hook(lambda m, i, out: dtypes.append(out.sample.dtype))
    images = built.run(2, 2, 2)
    assert dtypes == [torch.float32] and str(images.dtype) == "float32"   # handed back as fp32 ...
    inner = []
    built.stages["upsampler"][0].conv_in.register_forward_hook(lambda m, i, out: inner.append(out.dtype))
    built.run(2, 2, 2)
    assert inner == [torch.bfloat16]                                     # ... computed in bf16
    with pytest.raises(ValueError, match="fp32 or bf16"):
        harness.precision({"precision": "fp16"})


def test_report_pairs_bf16_with_the_peers_bf16(bench_run):
    table = {("sample32", "unclip", 0): 2.0, ("sample32", "diffusers", 0): 4.0,
             ("sample32", "unclip-bf16", 0): 1.0, ("sample32", "diffusers-bf16", 0): 3.0}
    args = SimpleNamespace(workloads=["sample32"], system_list=["unclip", "unclip-bf16", "diffusers", "diffusers-bf16"],
                           reps=1, quick=True, threads=2, peak_size=64, skipped={})
    summary = bench_run.summarise(_runs(table), args, {"fp32": 1e10, "fp32_cpu": 1e10})
    assert summary["ratios"]["sample32|unclip-bf16|diffusers-bf16"]["median"] == 3.0
    assert summary["ratios"]["sample32|unclip|diffusers"]["median"] == 2.0
    assert "sample32|unclip|diffusers-bf16" not in summary["ratios"]   # fp32 is never divided by a bf16 row
    summary.update(command="python bench/run.py --quick", stamp="test", peaks=[{"fp32": 1e10}],
                   peak={"fp32": 1e10, "fp32_cpu": 1e10}, results_dir="bench/results/test")
    import report

    text = report.markdown(summary)
    assert "| sample32 | unclip-bf16 | **3.00×** (3.00; CPU time 3.00×) vs `diffusers-bf16` |" in text
    assert "| sample32 | unclip | **2.00×** (2.00; CPU time 2.00×) vs `diffusers` |" in text
    assert "not like for like" not in text
    # without the peer's bf16 row, our bf16 row is divided by its fp32 row and says so
    del summary["ratios"]["sample32|unclip-bf16|diffusers-bf16"]
    assert "vs `diffusers` (ours bf16, diffusers fp32: not like for like)" in report.markdown(summary)
