"""Contract tests for typed configs and atomic safetensors checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch

from unclip.checkpoint import atomic_write, load_model, read_metadata, save_model
from unclip.config import apply_overrides, from_dict, load_config, to_dict
from unclip.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class InnerConfig:
    width: int = 8
    kind: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class OuterConfig:
    inner: InnerConfig = field(default_factory=InnerConfig)
    mults: tuple[int, ...] = (1, 2)
    rate: float = 0.5

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError("rate must be >= 0")


class TinyNet(torch.nn.Module):
    config_class = InnerConfig

    def __init__(self, config: InnerConfig):
        super().__init__()
        self.config = config
        self.linear = torch.nn.Linear(config.width, config.width)


def test_from_dict_round_trip():
    cfg = from_dict(OuterConfig, {"inner": {"width": 4, "kind": "b"}, "mults": [1, 2, 4], "rate": 1})
    assert cfg == OuterConfig(InnerConfig(4, "b"), (1, 2, 4), 1.0)
    assert from_dict(OuterConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"bogus": 1}, "unknown config key 'bogus' in OuterConfig"),
        ({"inner": {"depth": 3}}, "unknown config key 'depth' in OuterConfig.inner"),
        ({"inner": {"kind": "c"}}, "OuterConfig.inner.kind: 'c' is not one of"),
        ({"inner": {"width": "wide"}}, "expected an integer"),
        ({"rate": -1}, "rate must be >= 0"),
        ({"mults": 3}, "expected a list"),
    ],
)
def test_from_dict_rejects_bad_input(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        from_dict(OuterConfig, data)


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("inner:\n  width: 16\nrate: 0.1\n")
    cfg = load_config(OuterConfig, path, ["inner.kind=b", "mults=[3, 4]"])
    assert cfg.inner == InnerConfig(16, "b") and cfg.mults == (3, 4) and cfg.rate == 0.1
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(OuterConfig, tmp_path / "missing.yaml")


def test_save_and_load_model_needs_only_the_path(tmp_path):
    model = TinyNet(InnerConfig(width=3))
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    loaded = load_model(path, model_class=TinyNet)
    assert isinstance(loaded, TinyNet) and loaded.config == model.config
    assert torch.equal(loaded.linear.weight, model.linear.weight)
    assert "config" in read_metadata(path)
    half = tmp_path / "half.safetensors"
    save_model(model, half, dtype=torch.float16)
    assert load_model(half, model_class=TinyNet).linear.weight.dtype == torch.float32


def test_load_model_rejects_garbage_and_wrong_class(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    path = tmp_path / "model.safetensors"
    save_model(TinyNet(InnerConfig()), path)
    with pytest.raises(CheckpointError, match="expected a Linear"):
        load_model(path, model_class=torch.nn.Linear)
    with pytest.raises(CheckpointError, match="not an unclip model"):
        load_model(path)  # a class outside the unclip package is never imported


def test_atomic_write_keeps_previous_file_on_crash(tmp_path):
    path = tmp_path / "state.txt"
    atomic_write(path, lambda tmp: tmp.write_text("first"))

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]
    assert path.stat().st_mode & 0o044 == 0o044, "others can read what we write (not mkstemp's 0600)"


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
    from unclip.checkpoint import replace_dir

    old, new = tmp_path / "model", tmp_path / ".model.tmp"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "weights").write_text(text)
    replace_dir(new, old)
    assert (old / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or aside folder left
    fresh = tmp_path / ".other.tmp"
    fresh.mkdir()
    replace_dir(fresh, tmp_path / "other")
    assert (tmp_path / "other").is_dir() and not fresh.exists()
