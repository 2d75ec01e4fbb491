"""Run directories: which stage, which resolved config, and refusing to mix two runs.

``RUNDIR/config.json`` is the resolved stage config (loadable with
``unclip.config.load_config(StageConfig, RUNDIR/"config.json")``) and
``RUNDIR/run.json`` names the stage (a registry name or ``module:Class``)
and the run's status, so ``unclip train --resume RUNDIR`` needs nothing else.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

from unclip import __version__
from unclip.config import apply_overrides, from_dict, load_config, load_config_file, save_config, to_dict
from unclip.errors import ConfigError, OutputError, UnclipError
from unclip.train.stage import Stage
from unclip.train.stages import STAGES, get_stage_class

__all__ = ["resolve_stage", "stage_spec", "build_stage", "resume_stage", "prepare_run_dir", "read_run_info",
           "write_run_info"]


def resolve_stage(spec: str) -> type[Stage]:
    """A registered stage name (``prior``) or a plug-in class path (``my_pkg.stages:MyStage``)."""
    if ":" not in spec:
        return get_stage_class(spec)
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise UnclipError(f"cannot import stage {spec!r}; give a registered name "
                          f"({', '.join(sorted(STAGES))}) or an importable module:Class") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnclipError(f"{spec!r} is not a subclass of unclip.train.stage.Stage")
    return cls


def stage_spec(stage: Stage | type[Stage]) -> str:
    cls = stage if isinstance(stage, type) else type(stage)
    path = f"{cls.__module__}:{cls.__qualname__}"
    return cls.name if cls.name and STAGES.get(cls.name) == path else path


def build_stage(spec: str, config_path: str | Path | None, overrides: Sequence[str] = ()) -> Stage:
    """Resolve the stage and load its config (file + ``key=value`` overrides)."""
    cls = resolve_stage(spec)
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        raise UnclipError(f"stage {spec!r} does not declare config_class")
    return cls(load_config(config_cls, config_path, overrides))


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise UnclipError(f"{run_dir} is not a training run (no run.json); start one with --out {run_dir}")
    return json.loads(path.read_text(encoding="utf-8"))


def write_run_info(run_dir: Path, stage: Stage, status: str, **extra: Any) -> None:
    from unclip.checkpoint import atomic_write_text

    path = Path(run_dir) / "run.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"created": time.time()}
    info.update({"stage": stage_spec(stage), "unclip_version": __version__, "status": status,
                 "updated": time.time(), **extra})
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=True) + "\n")


def resume_stage(run_dir: Path, spec: str | None = None, overrides: Sequence[str] = ()) -> Stage:
    """Rebuild a run's stage from ``RUNDIR/config.json`` (+ optional overrides, e.g. ``train.steps=...``)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if spec is not None and spec != info["stage"]:
        raise UnclipError(f"{run_dir} is a {info['stage']!r} run, not {spec!r}; drop the stage name or fix it")
    cls = resolve_stage(info["stage"])
    data = apply_overrides(load_config_file(run_dir / "config.json"), overrides)
    return cls(from_dict(cls.config_class, data))


def prepare_run_dir(run_dir: Path, stage: Stage, *, resume: bool) -> None:
    """Create ``run_dir`` and write config.json/run.json; refuse to overwrite another run unless resuming."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if config_path.is_file() and not resume:
        old = load_config_file(config_path)
        new = to_dict(stage.config)
        if old == new:
            raise UnclipError(f"{run_dir} already holds this run; continue it with --resume {run_dir} "
                              "or choose a new --out")
        key = _first_difference(old, new)
        raise UnclipError(f"{run_dir} holds a different run (config differs at '{key}'); "
                          "choose a new --out or delete that directory")
    if resume and (run_dir / "run.json").is_file():
        old_spec = read_run_info(run_dir)["stage"]
        if old_spec != stage_spec(stage):
            raise ConfigError(f"{run_dir} is a {old_spec!r} run, cannot resume it as {stage_spec(stage)!r}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os_error(exc, run_dir, "choose another --out") from None
    save_config(stage.config, config_path)
    write_run_info(run_dir, stage, "running")


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(top level)"
