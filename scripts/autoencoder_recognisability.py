"""How recognisable the autoencoder's reconstructions are: the ceiling its latent decoder can reach.

    python scripts/autoencoder_recognisability.py runs/ae-emoji64 --data data/emoji64-all \
        --reference-data data/emoji256-all --split train --count 512

Reconstructs ``--count`` images of ``--split`` (a seeded sample) through the autoencoder and prints the
EfficientNet-Lite1 recognisability (``unclip.eval.recognisability``) of the reconstructions beside the real
images at the same size (the ceiling) and the chance level, plus the reconstruction PSNR.
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
    rates.update(split=args.split, image_size=model.config.image_size)
    print(json.dumps(rates, indent=2))


if __name__ == "__main__":
    main()
