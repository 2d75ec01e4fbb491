"""Per-stage sampling settings: one frozen dataclass, validated once, from which the rest is derived.

``StageSampling`` holds how one Gaussian stage (prior, decoder, upsampler) is sampled: sampler, steps,
timestep spacing, classifier-free guidance scale, DDIM eta and network precision. Each field's metadata
carries its limits and help, so the ``unclip generate`` flags (``cli/generate.py``), the HTTP schema and
the server's hard limits (``serve/``) and ``unclip eval --set`` read them from here: a new setting is one
field (plus one ``FLAT`` row where it is exposed per stage).

The public Python API keeps its flat keyword arguments (``decoder_steps``, ``prior_guidance``, ``sampler``,
``spacing``, ``eta``, ...); ``FLAT`` maps each onto (stage, field) and ``resolve_stages`` is the one place
that turns them, over a pipeline's defaults, into a ``StageSampling`` per stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from unclip.diffusion.registry import get_sampler, sampler_names
from unclip.diffusion.schedule import SPACINGS
from unclip.errors import UnclipError
from unclip.precision import PRECISIONS

__all__ = ["StageSampling", "STAGES", "GUIDED", "STAGE_DEFAULTS", "FLAT", "GLOBAL", "GUIDANCE_MAX", "STEPS_MAX",
           "default_settings", "choices_of", "flat_names", "help_of", "limits", "parse_flat", "resolve_stages", "stage_of"]

STEPS_MAX = 1000
GUIDANCE_MAX = 50.0  # the one guidance limit: the pipeline's, the API schema's and the CLI's
STAGES = ("prior", "decoder", "upsampler")
GUIDED = ("prior", "decoder")  # the stages with classifier-free guidance (the upsampler is unguided)


def _setting(default, help: str, *, low=None, high=None, choices=None,
             unknown: str = "unknown {name} {value!r} (choose from: {choices})"):
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices,
                                            "unknown": unknown})


@dataclass(frozen=True, kw_only=True)
class StageSampling:
    """How one stage is sampled. ``stage`` only names the stage in error messages."""

    sampler: str = _setting("ddim", "sampler (unclip.diffusion.registry)", choices=lambda: sampler_names("gaussian"))
    steps: int = _setting(25, "sampling steps", low=1, high=STEPS_MAX)
    spacing: str = _setting("trailing", "timestep grid; quadratic ends near t = 0 and is the better grid at "
                            "few steps", choices=lambda: SPACINGS)
    guidance_scale: float = _setting(1.0, "classifier-free guidance scale", low=0.0, high=GUIDANCE_MAX)
    eta: float = _setting(0.0, "DDIM eta (0: deterministic)", low=0.0, high=1.0)
    precision: str = _setting("auto", "network precision: auto = bf16 where the CPU/GPU computes it natively, "
                              "else fp32", choices=lambda: PRECISIONS,
                              unknown="{name} must be one of {choices}, got {value!r}")  # as unclip.precision's
    stage: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        get_sampler(self.sampler, "gaussian")  # the registry's own message: unknown, or of the other kind
        for f in dataclasses.fields(self):
            if f.name != "stage":
                check_value(f, getattr(self, f.name), self._name(f.name))
        get_sampler(self.sampler, "gaussian", eta=self.eta)

    def _name(self, name: str) -> str:
        flat = {v: k for k, v in FLAT.items() if v[0] == self.stage}
        return flat.get((self.stage, name), name)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "stage"}


def check_value(f: dataclasses.Field, value, name: str) -> None:
    """A one-line ``UnclipError`` unless ``value`` fits field ``f``'s type, range and choices."""
    meta = f.metadata
    if meta.get("choices") is not None:
        choices = tuple(meta["choices"]())
        if value not in choices:
            raise UnclipError(meta["unknown"].format(name=name, value=value, choices=", ".join(choices)))
        return
    kind = int if f.type in ("int", int) else float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise UnclipError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if not low <= value <= high:
        raise UnclipError(f"{name} must be in [{low:g}, {high:g}], got {value}")


def limits(name: str) -> tuple[float, float]:
    """(low, high) of field ``name``: what the CLI flags and the HTTP schema accept."""
    meta = {f.name: f.metadata for f in dataclasses.fields(StageSampling)}[name]
    return meta["low"], meta["high"]


def help_of(name: str) -> str:
    return {f.name: f.metadata for f in dataclasses.fields(StageSampling)}[name]["help"]


def choices_of(name: str) -> tuple[str, ...]:
    """The values field ``name`` accepts now (a sampler registered at run time included)."""
    return tuple({f.name: f.metadata for f in dataclasses.fields(StageSampling)}[name]["choices"]())


# Flat keyword arguments (the public API, the CLI flags --decoder-steps, ..., the HTTP fields) -> (stage, field).
# A stage's sampler and spacing, and GLOBAL's names for every stage, complete the set.
FLAT: dict[str, tuple[str, str]] = {
    "prior_steps": ("prior", "steps"),
    "decoder_steps": ("decoder", "steps"),
    "upsampler_steps": ("upsampler", "steps"),
    "prior_guidance": ("prior", "guidance_scale"),
    "decoder_guidance": ("decoder", "guidance_scale"),
    **{f"{stage}_{name}": (stage, name) for stage in STAGES for name in ("sampler", "spacing")},
}
GLOBAL = ("sampler", "spacing", "eta", "precision")  # one value for every stage
STAGE_DEFAULTS: dict[str, StageSampling] = {  # precision "auto": bf16 where native, else fp32 (unclip.precision)
    "prior": StageSampling(steps=25, guidance_scale=2.0, stage="prior"),
    "decoder": StageSampling(steps=25, guidance_scale=3.0, stage="decoder"),
    "upsampler": StageSampling(steps=15, stage="upsampler"),
}


def default_settings() -> dict[str, dict[str, Any]]:
    """The per-stage defaults a pipeline starts from (``pipeline.json``'s "defaults" override them)."""
    keys = ("steps", "sampler", "guidance_scale", "precision")
    return {stage: {k: v for k, v in STAGE_DEFAULTS[stage].as_dict().items()
                    if k in keys and (k != "guidance_scale" or stage in GUIDED)} for stage in STAGES}


def stage_of(name: str) -> str | None:
    """The stage a flat setting belongs to (None: every stage)."""
    return FLAT[name][0] if name in FLAT else None


def flat_names(stages: Iterable[str] = STAGES, fields: Iterable[str] | None = None) -> list[str]:
    """The flat per-stage names of ``stages`` (and of ``fields`` only, when given), in ``FLAT``'s order."""
    stages, fields = set(stages), None if fields is None else set(fields)
    return [k for k, (s, f) in FLAT.items() if s in stages and (fields is None or f in fields)]


def parse_flat(name: str, value):
    """``value`` checked against the field a flat name (``decoder_steps``) or a GLOBAL one (``eta``) sets;
    the one check ``unclip eval --set`` applies before a model loads."""
    field_name = FLAT[name][1] if name in FLAT else name
    f = {f.name: f for f in dataclasses.fields(StageSampling)}[field_name]
    if field_name == "sampler":  # either kind: which one applies depends on the model
        if value not in sampler_names():
            raise UnclipError(f"unknown sampler {value!r} (choose from: {', '.join(sampler_names())})")
        return value
    if f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    check_value(f, value, name)
    return value


def resolve_stages(stages: Iterable[str], defaults: Mapping[str, Mapping[str, Any]], *, values: Mapping[str, Any],
                   device=None) -> dict[str, StageSampling]:
    """A ``StageSampling`` per stage: ``values`` (flat names, None = unset) over ``defaults`` (per stage, from
    ``pipeline.json``) over ``STAGE_DEFAULTS``. A stage-wide ``eta`` applies where the sampler takes it;
    ``precision`` is resolved for ``device`` so the settings record what actually ran."""
    from unclip.precision import resolve_precision

    given = {k: v for k, v in values.items() if v is not None}
    for name, value in given.items():  # each value checked once, under the name the caller used
        if name in FLAT or name in GLOBAL:
            parse_flat(name, value)
        else:
            raise UnclipError(f"unknown sampling setting {name!r} (choose from: {', '.join([*FLAT, *GLOBAL])})")
    out = {}
    known = {f.name for f in dataclasses.fields(StageSampling)} - {"stage"}
    for stage in stages:
        merged = {**STAGE_DEFAULTS[stage].as_dict(), **{k: v for k, v in defaults.get(stage, {}).items() if k in known}}
        merged.update({k: given[k] for k in ("sampler", "spacing", "precision") if k in given})
        merged.update({f: given[name] for name, (s, f) in FLAT.items() if s == stage and name in given})
        spec = get_sampler(merged["sampler"], "gaussian")
        merged["eta"] = float(given.get("eta", 0.0)) if spec.takes_eta else 0.0
        merged["steps"] = int(merged["steps"])
        if device is not None:
            merged["precision"] = resolve_precision(merged["precision"], device)
        out[stage] = StageSampling(**merged, stage=stage)
    return out


def check_stage_sampling(settings: Any, prefix: str) -> None:
    """Check a training stage's sampling section (any dataclass with some of ``StageSampling``'s fields) by
    ``StageSampling``'s own rules, so limits and choices have one home; raises ``ValueError`` (``from_dict``
    turns it into a ConfigError naming the section, ``prefix``)."""
    names = {f.name for f in dataclasses.fields(StageSampling)} - {"stage"}
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name in names}
    try:
        StageSampling(**values, stage=prefix)
    except UnclipError as exc:
        raise ValueError(str(exc)) from None
