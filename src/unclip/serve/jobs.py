"""A bounded job queue with one worker thread.

The server holds ONE loaded model and runs ONE job at a time (torch already
uses every core of a small CPU; two jobs at once would only thrash). Requests
become ``Job``s in a queue of at most ``max_queue`` waiting jobs: a full queue
refuses at once (``QueueFull`` -> HTTP 429), it never blocks.

Each job has a deadline (submission + ``time_limit_s``). The worker checks it
before starting a job, and the job's progress callback checks it (and a cancel
flag) at every sampling step, raising ``JobStopped`` to unwind the sampler.
A job's inputs, seeds and outputs live on the job object only, so results of
concurrent requests cannot mix.
"""

from __future__ import annotations

import collections
import concurrent.futures
import enum
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from unclip.errors import UnclipError

# report(stage, step, total): called by a running job after each sampling step
Report = Callable[[str, int, int], None]


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # the request was invalid for this model, or an internal error
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class QueueFull(UnclipError):
    """The queue already holds ``max_queue`` waiting jobs."""


class JobStopped(Exception):
    """Raised from the progress callback to abort a job (cancelled or out of time)."""

    def __init__(self, state: JobState, message: str):
        super().__init__(message)
        self.state = state


@dataclass
class Progress:
    stage: str = ""
    step: int = 0
    total: int = 0


class Job:
    """One request: what to run, its state, progress and result."""

    def __init__(self, kind: str, run: Callable[[Report], Any], deadline: float):
        self.id = secrets.token_hex(8)  # unguessable: one client cannot poll another's job
        self.kind = kind
        self.run = run
        self.deadline = deadline
        self.state = JobState.QUEUED
        self.progress = Progress()
        self.result: Any = None
        self.error = ""
        self.internal_error = False  # True: a bug (HTTP 500), False: the user's input (HTTP 4xx)
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.cancel_requested = threading.Event()
        self.done = concurrent.futures.Future()  # resolves (to None) when the job finishes


class JobQueue:
    """Bounded FIFO of jobs served by one worker thread."""

    def __init__(self, *, max_queue: int, time_limit_s: float, keep_results: int,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic):
        self.max_queue = max_queue
        self.time_limit_s = time_limit_s
        self.keep_results = keep_results
        self.logger = logger or logging.getLogger("unclip.serve")
        self.clock = clock
        self._pending: collections.deque[Job] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.completed = 0
        self.refused = 0

    # --- lifecycle -----------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="unclip-serve-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything and join the worker."""
        with self._cond:
            self._stopping = True
            for job in list(self._pending) + ([self._running] if self._running else []):
                job.cancel_requested.set()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            while self._pending:
                self._finish(self._pending.popleft(), JobState.CANCELLED, "the server is shutting down")

    # --- client side ---------------------------------------------------
    def submit(self, kind: str, run: Callable[[Report], Any]) -> Job:
        """Queue ``run`` as a job or raise ``QueueFull`` at once."""
        with self._cond:
            if self._stopping or self._thread is None:
                raise UnclipError("the server is not accepting jobs (it is starting or shutting down)")
            if len(self._pending) >= self.max_queue:
                self.refused += 1
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting); retry in a few seconds")
            job = Job(kind, run, deadline=self.clock() + self.time_limit_s)
            self._pending.append(job)
            self._jobs[job.id] = job
            self._cond.notify_all()
            return job

    def is_full(self) -> bool:
        with self._cond:
            return len(self._pending) >= self.max_queue

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """How many jobs run before ``job`` (0: it is next or running)."""
        with self._cond:
            if job.state is not JobState.QUEUED:
                return 0
            try:
                return self._pending.index(job) + (1 if self._running else 0)
            except ValueError:
                return 0

    def cancel(self, job: Job) -> None:
        """Cancel a queued job now; a running one stops at its next step."""
        with self._cond:
            if job.state is JobState.QUEUED and job in self._pending:
                self._pending.remove(job)
                self._finish(job, JobState.CANCELLED, "cancelled by the client")
            else:
                job.cancel_requested.set()

    def stats(self) -> dict:
        with self._cond:
            return {"waiting": len(self._pending), "running": int(self._running is not None),
                    "max_queue": self.max_queue, "completed": self.completed, "refused": self.refused}

    # --- worker side ---------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._running = job
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None

    def _run(self, job: Job) -> None:
        if job.cancel_requested.is_set():
            return self._finish_locked(job, JobState.CANCELLED, "cancelled by the client")
        if self.clock() > job.deadline:
            return self._finish_locked(job, JobState.TIMEOUT, f"waited in the queue past the time limit "
                                       f"of {self.time_limit_s:g} s; retry when the server is less busy")
        job.state = JobState.RUNNING
        job.started = self.clock()

        def report(stage: str, step: int, total: int) -> None:
            job.progress = Progress(stage, step, total)
            if job.cancel_requested.is_set():
                raise JobStopped(JobState.CANCELLED, "cancelled by the client")
            if self.clock() > job.deadline:
                raise JobStopped(JobState.TIMEOUT, f"stopped at the time limit of {self.time_limit_s:g} s; "
                                 "use fewer steps or images")

        try:
            job.result = job.run(report)
        except JobStopped as stop:
            return self._finish_locked(job, stop.state, str(stop))
        except UnclipError as exc:
            return self._finish_locked(job, JobState.FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug; keep serving the next job
            self.logger.exception("job %s (%s) failed", job.id, job.kind)
            job.internal_error = True
            return self._finish_locked(job, JobState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        self._finish_locked(job, JobState.DONE, "")

    def _finish_locked(self, job: Job, state: JobState, error: str) -> None:
        with self._cond:
            self._finish(job, state, error)

    def _finish(self, job: Job, state: JobState, error: str) -> None:
        """Mark ``job`` finished and drop the oldest finished jobs beyond ``keep_results``."""
        job.state, job.error, job.finished = state, error, self.clock()
        job.run = None  # drop references to uploads and closures
        self.completed += 1
        finished = [key for key, kept in self._jobs.items() if kept.state.finished]
        for key in finished[: max(0, len(finished) - self.keep_results)]:
            del self._jobs[key]
        if not job.done.done():
            job.done.set_result(None)
