"""unclip: text-to-image generation on CLIP latents.

Two systems in one package: unCLIP (Ramesh et al. 2022, arXiv 2204.06125) and
CLIP-VQDiffusion (arXiv 2403.14944). See README.md for the map of modules.
"""

__version__ = "0.1.0"
