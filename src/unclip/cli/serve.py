"""``unclip serve``: the web app and HTTP API around one loaded model."""

from __future__ import annotations

import socket
import sys

from unclip.cli.common import add_command, float_in_range, int_in_range
from unclip.devices import check_device
from unclip.errors import UnclipError
from unclip.limits import MAX_IMAGE_PIXELS, MAX_IMAGES

EXAMPLES = """
  unclip serve --model shapes                      # a shipped model, http://127.0.0.1:7860
  unclip serve --model runs/pipeline --port 8000   # a pipeline directory
  unclip serve --model shapes --max-queue 4 --time-limit 60 --max-images 4
  curl -s localhost:7860/api/generate -H 'content-type: application/json' \\
       -d '{"prompt": "a red circle", "num_images": 2, "seed": 1}'
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "serve",
        help="web app and HTTP API (generate, variations, interpolate, text diffs, img2img, inpaint)",
        description="Serve a page and a JSON HTTP API (OpenAPI docs at /docs) for one loaded model. "
        "Requests run one at a time from a bounded queue; a full queue answers HTTP 429. "
        "Binds to 127.0.0.1 unless --host says otherwise. Needs the 'serve' extra: pip install 'unclip[serve]'.",
        examples=EXAMPLES, func=run,
    )
    parser.add_argument("--model", required=True, help="pipeline directory or shipped model name")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    parser.add_argument("--port", type=int_in_range(0, 65535), default=7860)
    parser.add_argument("--max-queue", type=int_in_range(1, 1000), default=8, help="waiting jobs before HTTP 429")
    parser.add_argument("--time-limit", type=float_in_range(1, 3600), default=120.0,
                        help="seconds per request, queue wait included")
    parser.add_argument("--max-images", type=int_in_range(1, MAX_IMAGES), default=8, help="images per request")
    parser.add_argument("--max-steps", type=int_in_range(1, 1000), default=250, help="sampling steps per stage")
    parser.add_argument("--max-upload-mb", type=float_in_range(0.01, 100), default=8.0, help="per uploaded image")
    parser.add_argument("--max-image-pixels", type=int_in_range(1, 2**31 - 1), default=MAX_IMAGE_PIXELS,
                        help="refuse uploads with more pixels (read from the header before decoding)")
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cpu or cuda")
    parser.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")


def run(args) -> int:
    try:
        import uvicorn  # noqa: F401 - the serve extra
        from unclip.serve.app import create_app
    except ImportError as exc:
        raise UnclipError(f"unclip serve needs the 'serve' extra ({exc.name} is missing): "
                          "pip install 'unclip[serve]'") from None
    from unclip.serve.config import ServeConfig

    try:
        config = ServeConfig(host=args.host, port=args.port, max_queue=args.max_queue,
                             time_limit_s=args.time_limit, max_images=args.max_images, max_steps=args.max_steps,
                             max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_image_pixels=args.max_image_pixels)
    except ValueError as exc:
        raise UnclipError(str(exc)) from None
    check_port_free(config.host, config.port)
    check_device(args.device)
    pipeline = load(args.model, args.device)
    app = create_app(pipeline, model_ref=args.model, config=config)
    if not config.is_loopback:
        print(f"warning: listening on {config.host}: anyone who can reach this machine can use the server",
              file=sys.stderr)
    print(f"unclip serve: http://{config.host}:{config.port}/  (API docs: /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def load(model: str, device: str = "cpu"):
    """Load the pipeline by directory or shipped name (unclip.pipelines.load_pipeline)."""
    try:
        from unclip.pipelines import load_pipeline
    except ImportError:
        raise UnclipError("this install has no pipelines module (unclip.pipelines.load_pipeline); "
                          "reinstall unclip") from None
    return load_pipeline(model, device=device)


def check_port_free(host: str, port: int) -> None:
    """Fail with one line instead of uvicorn's traceback when the address is taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UnclipError(f"cannot listen on {host}:{port} ({exc.strerror}); "
                              "choose another --port or --host") from None
