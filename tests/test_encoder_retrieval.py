"""Retrieval metrics, modality gap and zero-shot shapes accuracy on hand-made embeddings."""

import pytest
import torch

from unclip.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, all_combinations, parse_caption
from unclip.encoders.base import TextEncoding
from unclip.eval.retrieval import modality_gap, recall_at_k, retrieval_metrics, zero_shot_shapes


def test_recall_at_k_counts_positives_by_rank():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    keys = torch.tensor([[1.0, 0.1], [0.9, 1.0], [-1.0, 0.0]])
    same = torch.eye(3, dtype=torch.bool)
    recall = recall_at_k(query, keys, same, ks=(1, 2, 3))
    # query 0 -> key 0 first (hit@1); query 1 -> key 1 first (hit@1); query 2 -> key 2 is last (hit@3 only)
    assert recall == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 1.0})


def test_perfect_and_shuffled_embeddings():
    g = torch.Generator().manual_seed(0)
    embeds = torch.nn.functional.normalize(torch.randn(200, 32, generator=g), dim=-1)
    captions = [f"c{i}" for i in range(200)]
    perfect = retrieval_metrics(embeds, embeds, captions, pool=100)
    assert perfect["t2i_r1_100"] == 1.0 and perfect["i2t_r5_all"] == 1.0 and abs(perfect["cos_matched"] - 1) < 1e-5
    shuffled = retrieval_metrics(embeds, embeds[torch.randperm(200, generator=g)], captions, pool=100)
    assert shuffled["t2i_r5_100"] < 0.2
    # duplicated captions: retrieving any item with the same caption is a hit
    dup = retrieval_metrics(embeds, embeds[[1, 0] + list(range(2, 200))], ["same", "same"] + captions[2:], pool=100)
    assert dup["t2i_r1_all"] == 1.0


def test_modality_gap_of_separated_cones():
    image = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0]])
    text = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]])
    gap = modality_gap(image, text)
    assert abs(gap["cos_matched"] - 0.18) < 1e-6          # (0 + 0.36) / 2
    assert abs(gap["cos_image_image"] - 0.8) < 1e-6
    assert gap["centroid_gap"] > 1.0


class AttributeEncoder:
    """Text embedding = concatenated one-hots of the caption's shape, colour, position and size."""

    values = {"shape": SHAPES, "color": tuple(COLORS), "position": tuple(POSITIONS), "size": tuple(SIZES)}

    def encode_text(self, captions):
        rows = []
        for caption in captions:
            attributes = parse_caption(caption)
            rows.append(torch.cat([torch.tensor([float(v == attributes[a]) for v in vs])
                                   for a, vs in self.values.items()]))
        embed = torch.stack(rows)
        return TextEncoding(embed=embed, tokens=embed[:, None], mask=torch.ones(len(captions), 1, dtype=torch.bool))


def test_zero_shot_shapes_scores_each_attribute():
    encoder = AttributeEncoder()
    specs = all_combinations()[:40]
    metas = [{"shape": s.shape, "color": s.color, "position": s.position, "size": s.size} for s in specs]
    image = encoder.encode_text([s.caption for s in specs]).embed
    assert zero_shot_shapes(encoder, image, metas) == {
        "zeroshot_shape": 1.0, "zeroshot_color": 1.0, "zeroshot_position": 1.0, "zeroshot_size": 1.0,
        "zeroshot_all480": 1.0}
    # an image embedding that matches the caption with the *other* size gets only size wrong
    flipped = [s.caption.replace("small", "TMP").replace("large", "small").replace("TMP", "large") for s in specs]
    wrong_size = zero_shot_shapes(encoder, encoder.encode_text(flipped).embed, metas)
    assert wrong_size["zeroshot_size"] == 0.0 and wrong_size["zeroshot_all480"] == 0.0
    assert wrong_size["zeroshot_color"] == wrong_size["zeroshot_shape"] == wrong_size["zeroshot_position"] == 1.0
