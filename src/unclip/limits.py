"""The limits every entry point shares (CLI, HTTP API, dataset readers): one home for each number.

``MAX_IMAGE_PIXELS``: the largest input image, in pixels (width x height), read from the file's
header before any pixel is decoded, so a decompression bomb (a small file claiming a huge canvas)
costs nothing. 4096 x 4096 RGB is 48 MiB decoded. ``unclip serve --max-image-pixels`` and
``unclip vary|interpolate|textdiff --max-image-pixels`` raise or lower it; datasets use it as is.

``MAX_IMAGES``: the most images one command or request makes. The HTTP API's hard range
(``num_images`` <= 64) and the CLI's default cap on prompts x ``-n`` (override: ``--max-images``)
are this number; a server sets its own, lower, per-request limit (``unclip serve --max-images``,
default 8).

``GENERATE_BATCH``: images sampled (and, with ``--out-dir``, written) at a time by the CLI, so
memory stays flat however many images a run makes.
"""

from __future__ import annotations

__all__ = ["MAX_IMAGE_PIXELS", "MAX_IMAGES", "GENERATE_BATCH"]

MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGES = 64
GENERATE_BATCH = 16
