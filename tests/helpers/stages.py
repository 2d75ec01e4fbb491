"""A tiny test-only stage: regression of a fixed random MLP target on synthetic data.

It exercises every engine feature the real stages rely on: global-RNG dropout
and per-sample augmentation, noise from the engine's generator, optional bad
samples, an iterable variant, evaluation output and export. Used as
``helpers.stages:TinyStage`` (``tests/`` on the Python path).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from unclip.train.config import TrainConfig
from unclip.train.stage import Stage


@dataclass(frozen=True)
class TinyModelConfig:
    in_dim: int = 4
    hidden: int = 16
    dropout: float = 0.0


@dataclass(frozen=True)
class TinyDataConfig:
    size: int = 64
    jitter: float = 0.0          # per-sample random augmentation (global RNG inside __getitem__)
    input_noise: float = 0.0     # noise drawn from the engine generator in loss()
    bad_every: int = 0           # every n-th sample raises when loaded
    iterable: bool = False
    delay: float = 0.0           # seconds slept per loss call (to catch a run mid-way)
    path: str = ""
    image_only: bool = False


@dataclass(frozen=True)
class TinyStageConfig:
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    data: TinyDataConfig = field(default_factory=TinyDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20, batch_size=8, warmup_steps=2,
                                                                   checkpoint_every=5, log_every=1))


class TinyNet(nn.Module):
    config_class = TinyModelConfig

    def __init__(self, config: TinyModelConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(config.in_dim, config.hidden), nn.Tanh(),
                                 nn.Dropout(config.dropout), nn.Linear(config.hidden, 1))

    def forward(self, x):  # (B, in_dim) -> (B,)
        return self.net(x).squeeze(-1)


class TinyData(Dataset):
    def __init__(self, config: TinyDataConfig, in_dim: int):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(config.size, in_dim, generator=g)
        w = torch.randn(in_dim, generator=g)
        self.y = torch.sin(self.x @ w)
        self.config = config

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        if self.config.bad_every and index % self.config.bad_every == 0:
            raise OSError(f"corrupt sample {index}")
        x = self.x[index]
        if self.config.jitter:
            x = x + self.config.jitter * torch.randn_like(x)
        return {"x": x, "y": self.y[index]}


class TinyStream(IterableDataset):
    def __init__(self, data: TinyData):
        self.data = data

    def __iter__(self):
        for i in range(len(self.data)):
            yield self.data[i]


class TinyStage(Stage):
    name = "tiny"
    config_class = TinyStageConfig

    def build_model(self):
        return TinyNet(self.config.model)

    def build_dataset(self, split):
        data = TinyData(self.config.data, self.config.model.in_dim)
        return TinyStream(data) if self.config.data.iterable else data

    def loss(self, model, batch, generator):
        x = batch["x"]
        if self.config.data.input_noise:
            x = x + self.config.data.input_noise * torch.randn(x.shape, generator=generator, device=x.device)
        if self.config.data.delay:
            time.sleep(self.config.data.delay)
        mse = (model(x).float() - batch["y"]).pow(2).mean()
        return mse, {"mse": float(mse.detach())}

    def evaluate(self, model, out_dir, step):
        data = TinyData(self.config.data, self.config.model.in_dim)
        (out_dir / "done.txt").write_text(str(step))
        return {"val_mse": float((model(data.x) - data.y).pow(2).mean())}
