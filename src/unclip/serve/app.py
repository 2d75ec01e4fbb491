"""The FastAPI application: a small page plus a JSON API over one shared pipeline.

``create_app(pipeline, model_ref=..., config=ServeConfig())`` returns an app
whose every operation (generate, variations, interpolate, text-diff, img2img, inpaint) is a job
on one bounded queue served by one worker thread (``unclip.serve.jobs``).
``?wait=true`` (the default) answers with the finished result; ``?wait=false``
answers 202 with a job to poll at ``GET /api/jobs/{id}`` (the page does this to
show progress). Errors are ``{"error": "<one line>", "status": <code>}``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from unclip import __version__
from unclip.errors import UnclipError
from unclip.limits import MAX_IMAGES
from unclip.pipelines.edits import DEFAULT_RESAMPLE, DEFAULT_STRENGTH, MAX_RESAMPLE
from unclip.serve.backend import Backend, Result, Sampling, ServablePipeline
from unclip.serve.config import ServeConfig
from unclip.serve.images import b64, decode_upload
from unclip.serve.jobs import Job, JobQueue, JobState, QueueFull
from unclip.pipelines.seeds import SEED_MAX
from unclip.serve.schemas import SERVED_STAGE_SETTINGS, ErrorOut, GenerateIn, JobOut, ResultOut, SamplingIn
from unclip.pipelines.settings import FLAT

STATIC_DIR = Path(__file__).parent / "static"
GRACE_S = 2.0  # a sync request waits this long past its job's deadline for the worker to notice it
JSON_BODY_LIMIT = 64 * 1024
DECODERS = 2  # uploads decoded at the same time
ERRORS = {code: {"model": ErrorOut} for code in (404, 409, 411, 413, 422, 429, 500, 504)}
FAILED_STATUS = {JobState.FAILED: 422, JobState.CANCELLED: 409, JobState.TIMEOUT: 504}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def create_app(pipeline: ServablePipeline, *, model_ref: str = "model", config: ServeConfig = ServeConfig(),
               logger: logging.Logger | None = None) -> FastAPI:
    """Build the app around one loaded pipeline; the worker starts with the app's lifespan."""
    logger = logger or logging.getLogger("unclip.serve")
    backend = Backend(pipeline, model_ref=model_ref)
    queue = JobQueue(max_queue=config.max_queue, time_limit_s=config.time_limit_s,
                     keep_results=config.keep_results, logger=logger)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        queue.start()
        try:
            yield
        finally:
            queue.stop()

    if not (STATIC_DIR / "index.html").is_file():
        raise UnclipError(f"the web page files are missing from this install ({STATIC_DIR}); reinstall unclip")
    # docs_url=None: FastAPI's Swagger UI loads from a CDN; /docs is our own offline page over /openapi.json
    app = FastAPI(title="unclip", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text-to-image on CLIP latents (unCLIP, arXiv 2204.06125): generation, "
                  "variations, interpolations, text diffs, image-to-image and inpainting. Every result carries "
                  "its seeds and the equivalent `unclip` command. The ranges below are hard limits; each server "
                  "sets tighter ones (GET /api/info, `limits`).")
    app.state.queue, app.state.backend, app.state.config = queue, backend, config
    _install_error_handlers(app)
    _install_body_limit(app, config)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_info_routes(app, backend, config, queue)
    _add_operation_routes(app, backend, config, queue)
    _add_job_routes(app, queue)
    return app


def _add_info_routes(app: FastAPI, backend: Backend, config: ServeConfig, queue: JobQueue) -> None:
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def api_docs():
        return FileResponse(STATIC_DIR / "api.html", media_type="text/html")

    @app.get("/api/health", summary="Liveness and queue length")
    def health():
        return {"status": "ok", "queue": queue.stats()}

    @app.get("/api/info", summary="The model, its stages and defaults, and the server's limits")
    def info():
        return {"version": __version__, **backend.info(), "limits": config.public(), "queue": queue.stats(),
                "edit_defaults": {"strength": DEFAULT_STRENGTH, "resample": DEFAULT_RESAMPLE,
                                  "max_resample": MAX_RESAMPLE}}


def _add_operation_routes(app: FastAPI, backend: Backend, config: ServeConfig, queue: JobQueue) -> None:
    """generate (unCLIP §2), variations (§3.1), interpolate (§3.2), text-diff (§3.3), img2img (SDEdit) and
    inpaint (RePaint / fixed VQ tokens): each one job."""
    decoding = asyncio.Semaphore(DECODERS)

    async def image_job_inputs(image: UploadFile, num_images: int, sampling_in: SamplingIn):
        """The checks every upload endpoint makes, in order (cheap ones before reading the upload): the image
        count, the sampling settings, room in the queue; then the decoded image."""
        _check_count(config.max_images, num_images, "num_images")
        sampling = _sampling(config, sampling_in, backend.stages)
        _refuse_if_full(queue)
        return sampling, await _read_image(config, image, "image", decoding)

    @app.post("/api/generate", summary="Text to images", responses=ERRORS, response_model=JobOut)
    async def generate(body: GenerateIn, wait: bool = Query(True, description=WAIT_HELP)):
        prompt, negative = _check_text(config, body.prompt, "prompt"), body.negative_prompt.strip()
        if negative:
            _check_text(config, negative, "negative_prompt")
        _check_count(config.max_images, body.num_images, "num_images")
        sampling = _sampling(config, body, backend.stages)
        job = _submit(queue, "generate", lambda report: backend.generate(prompt, negative, body.num_images,
                                                                        sampling, report))
        return await _answer(queue, job, wait)

    @app.post("/api/variations", summary="Variations of an uploaded image", responses=ERRORS, response_model=JobOut)
    async def variations(image: UploadFile = File(..., description="PNG, JPEG, WebP, GIF or BMP"),
                         num_images: int = Form(4, ge=1, le=MAX_IMAGES),
                         sampling_in: SamplingIn = Depends(_sampling_form),
                         wait: bool = Query(True, description=WAIT_HELP)):
        sampling, picture = await image_job_inputs(image, num_images, sampling_in)
        name = _file_name(image, "image.png")
        job = _submit(queue, "variations",
                      lambda report: backend.variations(picture, num_images, sampling, report, image_name=name))
        return await _answer(queue, job, wait)

    @app.post("/api/interpolate", summary="Frames between two uploaded images", responses=ERRORS,
              response_model=JobOut)
    async def interpolate(image_a: UploadFile = File(...), image_b: UploadFile = File(...),
                          num_frames: int = Form(5, ge=2, le=64), sampling_in: SamplingIn = Depends(_sampling_form),
                          wait: bool = Query(True, description=WAIT_HELP)):
        _check_count(config.max_frames, num_frames, "num_frames")
        sampling = _sampling(config, sampling_in, backend.stages)
        _refuse_if_full(queue)
        first = await _read_image(config, image_a, "image_a", decoding)
        second = await _read_image(config, image_b, "image_b", decoding)
        names = (_file_name(image_a, "a.png"), _file_name(image_b, "b.png"))
        job = _submit(queue, "interpolate", lambda report: backend.interpolate(first, second, num_frames, sampling,
                                                                              report, image_names=names))
        return await _answer(queue, job, wait)

    @app.post("/api/text-diff", summary="Edit an image along a caption change (unCLIP sec. 3.3)",
              responses=ERRORS, response_model=JobOut)
    async def text_diff(image: UploadFile = File(...), from_caption: str = Form(..., max_length=2000),
                        to_caption: str = Form(..., max_length=2000), num_frames: int = Form(5, ge=2, le=64),
                        sampling_in: SamplingIn = Depends(_sampling_form),
                        wait: bool = Query(True, description=WAIT_HELP)):
        source = _check_text(config, from_caption, "from_caption")
        target = _check_text(config, to_caption, "to_caption")
        _check_count(config.max_frames, num_frames, "num_frames")
        sampling = _sampling(config, sampling_in, backend.stages)
        _refuse_if_full(queue)
        picture = await _read_image(config, image, "image", decoding)
        name = _file_name(image, "image.png")
        job = _submit(queue, "text-diff", lambda report: backend.text_diff(picture, source, target, num_frames,
                                                                          sampling, report, image_name=name))
        return await _answer(queue, job, wait)

    @app.post("/api/img2img", summary="Edit an uploaded image towards a caption (SDEdit, Meng et al. 2022)",
              responses=ERRORS, response_model=JobOut)
    async def img2img(image: UploadFile = File(...),
                      prompt: str = Form("", max_length=2000, description="the new caption; empty: the image's own "
                                         "CLIP embedding"),
                      strength: float = Form(DEFAULT_STRENGTH, ge=0, le=1, description="0 keeps the image, 1 "
                                             "ignores it"),
                      num_images: int = Form(1, ge=1, le=MAX_IMAGES), sampling_in: SamplingIn = Depends(_sampling_form),
                      wait: bool = Query(True, description=WAIT_HELP)):
        caption = _check_text(config, prompt, "prompt") if prompt.strip() else None
        sampling, picture = await image_job_inputs(image, num_images, sampling_in)
        name = _file_name(image, "image.png")
        job = _submit(queue, "img2img", lambda report: backend.img2img(picture, caption, strength, num_images, sampling,
                                                                      report, image_name=name))
        return await _answer(queue, job, wait)

    @app.post("/api/inpaint", summary="Regenerate the white part of a mask (RePaint; fixed VQ tokens)",
              responses=ERRORS, response_model=JobOut)
    async def inpaint(image: UploadFile = File(...),
                      mask: UploadFile = File(..., description="the image's size; white = regenerate, black = keep"),
                      prompt: str = Form("", max_length=2000, description="caption of the result; empty: the "
                                         "image's own CLIP embedding"),
                      num_images: int = Form(1, ge=1, le=MAX_IMAGES),
                      resample: int | None = Form(None, ge=1, le=MAX_RESAMPLE, description="unCLIP: RePaint passes "
                                                  "per step (default: the library's)"),
                      sampling_in: SamplingIn = Depends(_sampling_form),
                      wait: bool = Query(True, description=WAIT_HELP)):
        caption = _check_text(config, prompt, "prompt") if prompt.strip() else None
        sampling, picture = await image_job_inputs(image, num_images, sampling_in)
        painted = await _read_image(config, mask, "mask", decoding)
        if painted.size != picture.size:
            raise ApiError(422, f"mask: {painted.size[0]}x{painted.size[1]} pixels, but the image is "
                           f"{picture.size[0]}x{picture.size[1]}; paint the mask on the image's own canvas")
        names = (_file_name(image, "image.png"), _file_name(mask, "mask.png"))
        job = _submit(queue, "inpaint", lambda report: backend.inpaint(picture, painted, caption, num_images, resample,
                                                                      sampling, report, image_name=names[0],
                                                                      mask_name=names[1]))
        return await _answer(queue, job, wait)


def _add_job_routes(app: FastAPI, queue: JobQueue) -> None:
    @app.get("/api/jobs/{job_id}", summary="Status, progress and (when done) result of a job", response_model=JobOut,
             responses=ERRORS)
    def job_status(job_id: str):
        return _job_out(queue, _find(queue, job_id))

    @app.delete("/api/jobs/{job_id}", summary="Cancel a job", response_model=JobOut, responses=ERRORS)
    def job_cancel(job_id: str):
        job = _find(queue, job_id)
        queue.cancel(job)
        return _job_out(queue, job)

    @app.get("/api/jobs/{job_id}/images/{index}.png", summary="One result image as a PNG file", responses=ERRORS)
    def job_image(job_id: str, index: int):
        result = _result_of(_find(queue, job_id))
        if not 0 <= index < len(result.images):
            raise ApiError(404, f"job {job_id} has images 0..{len(result.images) - 1}, not {index}")
        name = f"unclip-{job_id}-{index}-seed{result.seeds[index]}.png"
        return Response(result.images[index], media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{name}"'})

    @app.get("/api/jobs/{job_id}/animation.gif", summary="The frames of an interpolation or text diff as a GIF",
             responses=ERRORS)
    def job_animation(job_id: str):
        result = _result_of(_find(queue, job_id))
        if result.gif is None:
            raise ApiError(404, f"job {job_id} has no animation (only interpolate and text-diff jobs do)")
        return Response(result.gif, media_type="image/gif")


WAIT_HELP = "true: answer when the job is done; false: answer 202 at once with a job to poll"


# --- input checks ------------------------------------------------------------
def _sampling_form(seed: str | None = None, **fields) -> SamplingIn:
    """The sampling fields of a multipart form (upload endpoints); its signature is ``SamplingIn``'s fields."""
    text = (seed or "").strip()
    if text and text != "random":
        try:
            parsed_seed: int | None = int(text)
        except ValueError:
            raise ApiError(422, f'seed: {text!r} is not an integer; give a number in [0, {SEED_MAX}] or "random"')
    else:
        parsed_seed = None
    return SamplingIn(seed=parsed_seed, **fields)


def _form_signature() -> inspect.Signature:
    """``_sampling_form``'s parameters as FastAPI reads them: one Form field per ``SamplingIn`` field."""
    params = [inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                                default=Form(None, description='integer, or "random"'))]
    for name, info in SamplingIn.model_fields.items():
        if name != "seed":
            bounds = {type(m).__name__: m for m in info.metadata}
            ge = getattr(bounds.get("Ge"), "ge", None)
            le = getattr(bounds.get("Le"), "le", None)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=info.annotation,
                                            default=Form(None, ge=ge, le=le, description=info.description)))
    return inspect.Signature(params, return_annotation=SamplingIn)


_sampling_form.__signature__ = _form_signature()


def _sampling(config: ServeConfig, body: SamplingIn, stages: tuple[str, ...]) -> Sampling:
    """Check steps and guidance against the server's limits and the model; draw a seed when none was given."""
    values = {name: getattr(body, name) for name in SERVED_STAGE_SETTINGS if getattr(body, name) is not None}
    for name, value in values.items():
        stage, field = FLAT[name]
        if stage == "upsampler" and stage not in stages:
            raise ApiError(422, f"{name}: this model has no upsampler (stages: {', '.join(stages)}); leave it out")
        if field == "steps" and value > config.max_steps:
            raise ApiError(422, f"{name}: {value} is more than this server's limit of {config.max_steps} steps")
        if field == "guidance_scale" and not config.min_guidance <= value <= config.max_guidance:
            raise ApiError(422, f"{name}: {value:g} is outside [{config.min_guidance:g}, {config.max_guidance:g}]")
    seed = body.seed
    if seed is None or seed == "random":
        seed = secrets.randbelow(SEED_MAX - 1024)  # room for seed + i per image
    elif not 0 <= seed <= SEED_MAX:
        raise ApiError(422, f"seed: {seed} is outside [0, {SEED_MAX}]")
    if body.sampler is not None:
        values["sampler"] = body.sampler
    return Sampling(seed=int(seed), values=values)


def _check_text(config: ServeConfig, text: str, name: str) -> str:
    text = text.strip()
    if not text:
        raise ApiError(422, f"{name}: is empty; type a caption")
    if len(text) > config.max_prompt_chars:
        raise ApiError(422, f"{name}: {len(text)} characters is more than the limit of {config.max_prompt_chars}")
    return text


def _check_count(limit: int, value: int, name: str) -> None:
    if value > limit:
        raise ApiError(422, f"{name}: {value} is more than this server's limit of {limit}")


def _file_name(upload: UploadFile, default: str) -> str:
    """The upload's base name for the CLI command (only printable, at most 100 characters)."""
    name = Path(upload.filename or "").name
    name = "".join(ch for ch in name if ch.isprintable())[:100]
    return name or default


async def _read_image(config: ServeConfig, upload: UploadFile, name: str, decoding: asyncio.Semaphore):
    """Read and decode one upload; at most ``DECODERS`` decode at once, so a burst of large
    uploads cannot hold many full-size bitmaps in memory together."""
    data = await upload.read(config.max_upload_bytes + 1)  # never more than the limit (+1 to detect it)
    try:
        async with decoding:
            return await run_in_threadpool(decode_upload, data, max_bytes=config.max_upload_bytes,
                                           max_pixels=config.max_image_pixels, max_side=config.max_image_side,
                                           name=name)
    except UnclipError as exc:
        status = 413 if len(data) > config.max_upload_bytes else 422
        raise ApiError(status, str(exc)) from None


# --- jobs ------------------------------------------------------------------
def _refuse_if_full(queue: JobQueue) -> None:
    """Answer 429 before spending time on decoding uploads (``_submit`` checks again, atomically)."""
    if queue.is_full():
        raise ApiError(429, f"the queue is full ({queue.max_queue} jobs waiting); retry in a few seconds",
                       headers={"Retry-After": "2"})


def _submit(queue: JobQueue, kind: str, run) -> Job:
    try:
        return queue.submit(kind, run)
    except QueueFull as exc:
        raise ApiError(429, str(exc), headers={"Retry-After": "2"}) from None
    except UnclipError as exc:
        raise ApiError(503, str(exc)) from None


async def _answer(queue: JobQueue, job: Job, wait: bool):
    if not wait:
        return JSONResponse(_job_out(queue, job).model_dump(), status_code=202,
                            headers={"Location": f"/api/jobs/{job.id}"})
    timeout = max(0.0, job.deadline - queue.clock()) + GRACE_S
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.done)), timeout)
    except asyncio.TimeoutError:
        queue.cancel(job)
        raise ApiError(504, f"the job did not finish within the time limit of {queue.time_limit_s:g} s") from None
    if job.state is not JobState.DONE:
        status = 500 if job.internal_error else FAILED_STATUS[job.state]
        raise ApiError(status, job.error)
    return _job_out(queue, job)


def _find(queue: JobQueue, job_id: str) -> Job:
    job = queue.get(job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}: it never existed or was dropped (the server keeps the "
                       f"last {queue.keep_results} results)")
    return job


def _result_of(job: Job) -> Result:
    if job.state is not JobState.DONE:
        raise ApiError(409, f"job {job.id} is {job.state.value}, it has no images")
    return job.result


def _job_out(queue: JobQueue, job: Job) -> JobOut:
    result = None
    if job.state is JobState.DONE:
        result = _result_out(job.id, job.result)
    return JobOut(job_id=job.id, kind=job.kind, status=job.state.value, position=queue.position(job),
                  progress=vars(job.progress), status_url=f"/api/jobs/{job.id}", error=job.error or None,
                  result=result)


def _result_out(job_id: str, result: Result) -> ResultOut:
    images = [{"index": i, "seed": result.seeds[i] if i < len(result.seeds) else result.seed,
               "label": result.labels[i] if i < len(result.labels) else "",
               "url": f"/api/jobs/{job_id}/images/{i}.png", "png_base64": b64(png)}
              for i, png in enumerate(result.images)]
    return ResultOut(images=images, seed=result.seed, seeds=result.seeds, settings=result.settings,
                     command=result.command, elapsed_s=result.elapsed_s,
                     animation_url=f"/api/jobs/{job_id}/animation.gif" if result.gif else None,
                     gif_base64=b64(result.gif) if result.gif else None,
                     strip_png_base64=b64(result.strip_png) if result.strip_png else None)


# --- plumbing ----------------------------------------------------------------
def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # loc is (body, character offset), not a field
            offset = first.get("loc", ("body", "?"))[-1]
            cause = (first.get("ctx") or {}).get("error", "malformed JSON")
            return _error(422, f"the request body is not valid JSON ({cause} at character {offset}); send a JSON "
                          'object such as {"prompt": "a red circle"} with Content-Type: application/json')
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return _error(422, f"{where}: {first.get('msg', 'invalid value')}{more}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


def _install_body_limit(app: FastAPI, config: ServeConfig) -> None:
    """Refuse bodies without a length or over the limit before reading them."""
    upload_limit = 2 * config.max_upload_bytes + 64 * 1024  # two images plus form fields

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return _error(411, "send a Content-Length header (streamed bodies are not accepted)")
            json_body = request.url.path == "/api/generate"
            limit = JSON_BODY_LIMIT if json_body else upload_limit
            if int(length) > limit:
                hint = (f"prompts are at most {config.max_prompt_chars} characters, so send a shorter JSON body"
                        if json_body else "send smaller images")
                return _error(413, f"the request body is {length} bytes, more than the limit of {limit}; {hint}")
        return await call_next(request)
