"""Training-engine building blocks: LR schedule, pickle-free optimiser state, EMA, resumable data."""

from __future__ import annotations


import pytest
import torch
from helpers.stages import TinyData, TinyDataConfig
from torch.utils.data import default_collate

from unclip.errors import DataError
from unclip.train.config import TrainConfig
from unclip.train.ema import EMA
from unclip.train.loader import BatchStream
from unclip.train.optim import build_optimizer, lr_factor, optimizer_from_tensors, optimizer_to_tensors


def test_lr_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)      # half-way: cos(pi/2) = 0
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    constant = TrainConfig(steps=110, warmup_steps=0, lr_schedule="constant")
    assert lr_factor(50, constant) == 1.0


def _trained_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 1))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    for _ in range(3):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_optimizer_state_roundtrips_through_tensors_and_json():
    model, opt = _trained_optimizer()
    tensors, meta = optimizer_to_tensors(opt)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    tensors = {k: v.clone() for k, v in tensors.items()}  # they alias the live state, as a file would not
    clone = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 1))
    clone.load_state_dict(model.state_dict())
    opt2 = build_optimizer(clone, TrainConfig(weight_decay=0.1))
    optimizer_from_tensors(opt2, tensors, meta)
    x = torch.randn(4, 3)
    for m, o in ((model, opt), (clone, opt2)):
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
    # weight decay only on matrices
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_ema_follows_decay_with_warmup():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=1)                        # decay_t = min(0.9, 2/11)
    assert ema.model.weight[0, 0].item() == pytest.approx(1 - 2 / 11)
    ema.update(model, step=1000)                     # decay_t = 0.9
    expected = (1 - 2 / 11) * 0.9 + 0.1
    assert ema.model.weight[0, 0].item() == pytest.approx(expected)
    assert not ema.model.weight.requires_grad


def _stream(**kw):
    data = TinyData(TinyDataConfig(size=kw.pop("size", 40), jitter=kw.pop("jitter", 0.0),
                                   bad_every=kw.pop("bad_every", 0)), 4)
    kw.setdefault("seed", 3)
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return BatchStream(data, default_collate, **kw)


def test_two_ranks_split_each_global_batch_of_one_rank():
    one = _stream(batch_size=8)
    r0, r1 = _stream(batch_size=4, rank=0, world_size=2), _stream(batch_size=4, rank=1, world_size=2)
    for _ in range(7):  # crosses an epoch boundary (40 // 8 = 5 batches per epoch)
        full = next(one).batch["x"]
        halves = torch.cat([next(r0).batch["x"], next(r1).batch["x"]])
        assert torch.equal(full, halves)
    assert one.position() == {"epoch": 1, "batch_index": 2}


def test_stream_resumes_mid_epoch_with_same_augmented_samples():
    reference = _stream(batch_size=4, jitter=0.5)
    seen = [next(reference).batch["x"] for _ in range(14)]
    resumed = _stream(batch_size=4, jitter=0.5, epoch=1, batch_index=3)   # 10 batches per epoch
    torch.manual_seed(999)  # the main process's RNG must not matter
    assert torch.equal(next(resumed).batch["x"], seen[13])
    with_workers = _stream(batch_size=4, jitter=0.5, num_workers=1)
    assert torch.equal(next(with_workers).batch["x"], seen[0])
    assert not torch.equal(seen[0], seen[10])  # a new epoch is a new order


def test_bad_samples_are_skipped_and_counted_in_a_worker():
    stream = _stream(batch_size=8, bad_every=4, num_workers=1)
    batches = [next(stream) for _ in range(5)]
    assert sum(b.bad for b in batches) == 10 and sum(b.size for b in batches) == 30
    assert "corrupt sample" in next(b.error for b in batches if b.bad)


def test_dataset_smaller_than_a_global_batch_is_a_data_error():
    # batch_size is per process: 2 processes x 8 = a global batch of 16
    with pytest.raises(DataError, match=r"has 15 samples, fewer than one global batch \(batch_size 8 x 2 "
                                        r"processes\); lower train.batch_size"):
        _stream(batch_size=8, size=15, world_size=2)
    for rank in (0, 1):  # exactly one global batch is enough: each rank gets its half, every epoch
        stream = _stream(batch_size=8, size=16, world_size=2, rank=rank)
        assert [next(stream).size for _ in range(3)] == [8, 8, 8] and stream.position()["epoch"] == 2
