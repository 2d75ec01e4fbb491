"""How recognisable the autoencoder's reconstructions are: the ceiling its latent decoder can reach.

    python scripts/autoencoder_recognisability.py runs/ae-emoji64 --data data/emoji64-all \
        --reference-data data/emoji256-all --split train --count 512

Reconstructs ``--count`` images of ``--split`` (a seeded sample) through the autoencoder and prints the
EfficientNet-Lite1 recognisability (``unclip.eval.recognisability``) of the reconstructions beside the real
images at the same size (the ceiling) and the chance level, plus the reconstruction PSNR and the errors of a
blank white image's reconstruction (``blank_max_error`` shows a blob) and the decoder's activation peak
(``peak_to_median``, the spike that draws it).
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from unclip.data import open_dataset
from unclip.eval.recognisability import load_recogniser, recognition_rates
from unclip.models.vq import psnr
from unclip.train.stages.decoder import load_autoencoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("autoencoder", help="autoencoder run dir or model.safetensors")
    parser.add_argument("--data", required=True)
    parser.add_argument("--reference-data", default=None, help="a larger build of the same data (default: --data)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_autoencoder(args.autoencoder).eval()
    data = open_dataset(args.data, split=args.split, image_size=model.config.image_size)
    refs = open_dataset(args.reference_data or args.data, split=args.split)
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    order = order[:args.count]
    images = torch.stack([data[i]["image"] for i in order])
    references = torch.stack([refs[i]["image"] for i in order])
    keys = [data[i]["caption"] for i in order]
    if keys != [refs[i]["caption"] for i in order]:
        raise SystemExit("error: --reference-data is not a build of the same dataset (captions differ)")
    recon = torch.cat([model.decode(model.encode(images[i:i + 64])) for i in range(0, len(images), 64)])
    rates = recognition_rates(load_recogniser(), recon, references, keys, seed=args.seed)
    rates["psnr"] = float(psnr(recon, images).mean())
    # a blank white image should come back white; a decoder that steers GroupNorm's image-wide statistics with a
    # local spike leaves a blob (docs/results.md): its largest per-pixel error, mean over RGB, and the mean error
    blank = torch.ones(1, 3, model.config.image_size, model.config.image_size)
    error = (model.decode(model.encode(blank)) - blank).abs().mean(1)[0]
    rates.update(blank_max_error=float(error.max()), blank_mean_error=float(error.mean()),
                 peak_to_median=_peak_to_median(model, images[:64]))
    rates.update(split=args.split, image_size=model.config.image_size)
    print(json.dumps(rates, indent=2))


def _peak_to_median(model, images: torch.Tensor) -> float:
    """Median over images of (largest / median activation magnitude) at the input of the decoder's last norm layer:
    about 20 where the decoder draws a GroupNorm blob, a few where it does not."""
    from unclip.models.vq import ChannelNorm

    last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.GroupNorm, ChannelNorm))][-1]
    seen = []
    handle = last.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].abs().amax(1).flatten(1)))
    try:
        model.decode(model.encode(images))
    finally:
        handle.remove()
    peaks = seen[0]
    return float((peaks.amax(1) / peaks.median(1).values).median())


if __name__ == "__main__":
    main()
