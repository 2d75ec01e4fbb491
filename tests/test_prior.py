"""The unCLIP diffusion prior: network contract, guidance, candidate selection, stage, export, eval."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from unclip.checkpoint import load_model, save_model
from unclip.config import from_dict, load_config
from unclip.encoders.base import TextEncoding
from unclip.encoders.shards import write_embedding_shards
from unclip.errors import ConfigError, UnclipError
from unclip.components import read_component_info
from unclip.models.embeddings import timestep_embedding
from unclip.models.prior import DiffusionPrior, PriorConfig, sample_prior

D, DT, L = 8, 6, 5


def tiny_prior(**kw) -> DiffusionPrior:
    torch.manual_seed(0)
    return DiffusionPrior(PriorConfig(embed_dim=D, token_dim=DT, max_text_len=L, width=32, layers=2, heads=2, **kw)).eval()


def text_batch(B=3, seed=0) -> TextEncoding:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(L)[None] < torch.randint(1, L + 1, (B, 1), generator=g)
    tokens = torch.randn(B, L, DT, generator=g) * mask[..., None]
    return TextEncoding(embed=F.normalize(torch.randn(B, D, generator=g), dim=-1), tokens=tokens, mask=mask)


def call(prior, text, x=None, t=None, drop=None):
    B = text.embed.shape[0]
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1)) if x is None else x
    t = torch.full((B,), 500) if t is None else t
    return prior(x, t, text_embed=text.embed, text_tokens=text.tokens, text_mask=text.mask, drop_text=drop)


def test_forward_shape_and_dependencies():
    prior, text = tiny_prior(), text_batch()
    out = call(prior, text)
    assert out.shape == (3, D) and torch.isfinite(out).all()
    assert not torch.allclose(out, call(prior, text, t=torch.full((3,), 10)))          # depends on t
    assert not torch.allclose(out, call(prior, text, x=torch.zeros(3, D)))             # depends on x_t
    other = TextEncoding(embed=text.embed.flip(0), tokens=text.tokens, mask=text.mask)
    assert not torch.allclose(out, call(prior, other))                                 # depends on z_t


def test_padded_tokens_are_ignored_and_drop_uses_null_condition():
    prior, text = tiny_prior(), text_batch()
    garbage = text.tokens + 5.0 * (~text.mask)[..., None]                              # change padding only
    torch.testing.assert_close(call(prior, TextEncoding(text.embed, garbage, text.mask)), call(prior, text))
    drop = torch.ones(3, dtype=torch.bool)
    other = text_batch(seed=7)
    torch.testing.assert_close(call(prior, text, drop=drop), call(prior, other, drop=drop))
    assert not torch.allclose(call(prior, text, drop=drop), call(prior, text))


def full_causal_pass(prior, text, x, t, drop):
    """Reference: the whole sequence [tokens][z_t][t][x_t][query] through every block under one causal mask."""
    B, W = x.shape[0], prior.config.width
    z = torch.where(drop[:, None], prior.null_text, prior.text_proj(text.embed))
    tokens, valid = prior._tokens(text.tokens, text.mask, drop, B, x)
    time = prior.time_mlp(timestep_embedding(t, W))
    seq = torch.cat([tokens, torch.stack([z, time, prior.x_proj(x), prior.query.expand(B, W)], 1)], 1)
    seq = seq + prior.position
    S = seq.shape[1]
    keys = torch.cat([valid, torch.ones(B, 4, dtype=torch.bool)], 1)
    mask = (torch.ones(S, S, dtype=torch.bool).tril() & (keys[:, None] | torch.eye(S, dtype=torch.bool)))[:, None]
    for block in prior.blocks:
        seq = block(seq, mask)
    return prior.out(prior.norm(seq[:, -1]))


def test_cached_prefix_equals_the_full_causal_pass():
    """The caption prefix is computed once (encode_text) and reused at every step: exactly the causal model."""
    prior, text = tiny_prior(), text_batch()
    x, t = torch.randn(3, D, generator=torch.Generator().manual_seed(1)), torch.tensor([999, 500, 3])
    for drop in (torch.zeros(3, dtype=torch.bool), torch.tensor([True, False, True])):
        expected = full_causal_pass(prior, text, x, t, drop)
        torch.testing.assert_close(call(prior, text, x=x, t=t, drop=drop), expected)
        kv, valid = prior.encode_text(text.embed, text.tokens, text.mask, drop)
        assert kv.shape == (3, 2, 2, 2, L + 1, 16) and valid.shape == (3, L + 1)
        for step_t in (t, t.flip(0)):  # one prefix serves every step
            torch.testing.assert_close(prior(x, step_t, prefix_kv=kv, prefix_valid=valid),
                                       full_causal_pass(prior, text, x, step_t, drop))


def test_save_load_round_trip_keeps_stats(tmp_path):
    prior = tiny_prior()
    prior.set_embed_stats({"image_mean": torch.full((D,), 0.1), "image_std": torch.full((D,), 0.5),
                           "text_mean": torch.zeros(D), "text_std": torch.full((D,), 2.0)})
    save_model(prior, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path / "model.safetensors")
    assert isinstance(loaded, DiffusionPrior) and loaded.config == prior.config
    torch.testing.assert_close(loaded.image_std, torch.full((D,), 0.5))
    text = text_batch()
    torch.testing.assert_close(call(loaded, text), call(prior, text))
    with pytest.raises(UnclipError, match="dims"):
        prior.set_embed_stats({k: torch.zeros(D + 1) for k in ("image_mean", "image_std", "text_mean", "text_std")})


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        from_dict(PriorConfig, {"width": 30, "heads": 4})
    with pytest.raises(ConfigError, match="learn_variance"):
        from_dict(PriorConfig, {"diffusion": {"learn_variance": True, "loss": "hybrid"}})
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(PriorConfig, {"depth": 3})


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m"])
def test_sample_prior_contract(sampler):
    prior, text = tiny_prior(), text_batch(4)
    noise = torch.randn(4, D, generator=torch.Generator().manual_seed(3))
    kw = dict(noise=noise, steps=4, sampler=sampler, guidance_scale=3.0)
    z = sample_prior(prior, text, generator=torch.Generator().manual_seed(0), **kw)
    assert z.shape == (4, D)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4))                          # unit_norm encoder
    torch.testing.assert_close(sample_prior(prior, text, generator=torch.Generator().manual_seed(0), **kw), z)
    if sampler != "ddpm":  # deterministic samplers: each caption's result does not depend on batching
        alone = sample_prior(prior, TextEncoding(text.embed[1:2], text.tokens[1:2], text.mask[1:2]),
                             **{**kw, "noise": noise[1:2]})
        torch.testing.assert_close(alone[0], z[1], atol=1e-5, rtol=1e-5)


def test_more_candidates_never_lower_the_text_score():
    prior, text = tiny_prior(), text_batch(6)
    noise = torch.randn(6, D, generator=torch.Generator().manual_seed(3))
    one = sample_prior(prior, text, noise=noise, steps=4, num_candidates=1)
    four = sample_prior(prior, text, noise=noise, steps=4, num_candidates=4)
    score = lambda z: (z * text.embed).sum(-1)  # noqa: E731
    assert bool((score(four) >= score(one) - 1e-6).all()) and not torch.allclose(one, four)
    negative = text_batch(6, seed=9)
    assert not torch.allclose(sample_prior(prior, text, negative_text=negative, noise=noise, steps=4), four)
    with pytest.raises(UnclipError, match="num_candidates"):
        sample_prior(prior, text, noise=noise, num_candidates=0)
    with pytest.raises(UnclipError, match="dims"):
        sample_prior(prior, TextEncoding(torch.zeros(1, D + 1), text.tokens[:1], text.mask[:1]))


def write_embeddings(root, n_train=192, n_test=48):
    """Synthetic embeddings where the image embedding is a fixed function of the caption's text embedding."""
    g = torch.Generator().manual_seed(0)
    n = n_train + n_test
    text = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    rotation = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    image = F.normalize(text @ rotation + 0.5 + 0.05 * torch.randn(n, D, generator=g), dim=-1)
    tokens = text[:, None, :DT].repeat(1, L, 1) + 0.1 * torch.randn(n, L, DT, generator=g)
    mask = torch.ones(n, L, dtype=torch.bool)
    splits = ["train"] * n_train + ["test"] * n_test
    write_embedding_shards(root, image_embed=image, text_embed=text, text_tokens=tokens, text_mask=mask,
                           captions=[f"caption {i}" for i in range(n)], splits=splits, shard_size=100)
    return root


def test_prior_stage_trains_exports_and_evaluates(tmp_path):
    from unclip.eval.prior_eval import main as eval_main
    from unclip.train.engine import run_training
    from unclip.train.stages import get_stage_class

    emb = write_embeddings(tmp_path / "emb")
    stage_cls = get_stage_class("prior")
    config = load_config(stage_cls.config_class, "configs/prior/tiny.yaml",
                         [f"data.path={emb}", "data.val_split=test", "train.steps=100", "train.batch_size=32",
                          "train.eval_every=0", "train.log_every=10", "train.checkpoint_every=1000",
                          "sample.eval_items=48", "model.width=64"])
    final = run_training(stage_cls(config), tmp_path / "run")
    path = final / "prior" / "model.safetensors"
    prior = load_model(path)
    assert isinstance(prior, DiffusionPrior) and prior.config.embed_dim == D and prior.config.max_text_len == L
    assert read_component_info(final / "prior")["role"] == "prior"
    # statistics come from the training split (no encoder stats in this synthetic dir)
    assert float(prior.image_mean.abs().sum()) > 0
    evals = sorted((tmp_path / "run" / "eval").glob("step_*/prior_eval.json"))
    table = json.loads(evals[-1].read_text())
    # 100 tiny steps already beat the two baselines of the paper's ablation on this easy mapping
    assert table["prior"]["cosine"] > table["mean_image_embedding"]["cosine"]
    assert table["prior"]["cosine"] > table["text_embedding"]["cosine"]
    assert table["prior"]["mean_rank"] < table["mean_image_embedding"]["mean_rank"]
    out = tmp_path / "table.json"
    assert eval_main(["--prior", str(tmp_path / "run"), "--embeddings", str(emb), "--items", "16", "--steps", "4",
                      "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["items"] == 16 and "caption_oracle" not in result   # unique captions: no ceiling row
    assert eval_main(["--prior", str(tmp_path / "nothing"), "--embeddings", str(emb)]) == 2


def test_embedding_metrics_ranks():
    from unclip.eval.prior_eval import embedding_metrics

    true = torch.eye(4)
    perfect = embedding_metrics(true, true)
    assert perfect["cosine"] == pytest.approx(1.0) and perfect["mean_rank"] == 1.0 and perfect["top1"] == 1.0
    shifted = embedding_metrics(true.roll(1, dims=0), true)
    assert shifted["cosine"] == pytest.approx(0.0) and shifted["top1"] == 0.0 and shifted["mean_rank"] == 2.0
    subset = embedding_metrics(true[[2]], true, torch.tensor([2]))               # one query against all 4
    assert subset["cosine"] == pytest.approx(1.0) and subset["mean_rank"] == 1.0


def test_retrieval_ranks_do_not_let_the_true_image_beat_itself():
    from unclip.eval.prior_eval import embedding_metrics

    # a query equal to its true image must rank it first; comparing against an elementwise cosine
    # (which differs from the matmul entry in the last bits) put about a third of these at rank 2
    embeds = F.normalize(torch.randn(512, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert embedding_metrics(embeds, embeds)["top1"] == 1.0


def test_caption_level_retrieval_and_paired_bootstrap():
    from unclip.eval.prior_eval import embedding_metrics, paired_bootstrap, per_query_metrics

    gallery = torch.eye(4)
    captions = ["a", "b", "a", "c"]
    swapped = gallery[[2, 1, 0, 3]]                # queries 0 and 2 hit the other image of caption "a"
    m = embedding_metrics(swapped, gallery, captions=captions)
    assert m["top1"] == 0.5 and m["caption_top1"] == 1.0 and m["caption_mean_rank"] == 1.0
    wrong = per_query_metrics(gallery[[1, 0, 3, 2]], gallery, captions=captions)
    assert wrong["caption_rank"].tolist() == [2.0, 2.0, 2.0, 2.0]
    right = per_query_metrics(gallery, gallery, captions=captions)
    same = paired_bootstrap(right, right)
    assert same["top1"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    better = paired_bootstrap(right, wrong, resamples=200)
    assert better["top1"]["diff"] == 1.0 and better["top1"]["low"] > 0
    assert better["mean_rank"]["diff"] == -1.0 and better["caption_top1"]["high"] == 1.0


def test_same_caption_reference_rows():
    from unclip.eval.prior_eval import _caption_means, _other_image_of_caption

    embeds = torch.eye(4)
    others, rows = _other_image_of_caption(embeds, ["a", "b", "a", "c"])
    assert rows.tolist() == [0, 2] and torch.equal(others, embeds[[2, 0]])
    means = _caption_means(embeds, ["a", "b", "a", "c"])
    torch.testing.assert_close(means[0], means[2])
    torch.testing.assert_close(means[1], embeds[1])
