"""The GPU worker: one thread that owns the pipeline and runs the store's jobs one at a time.

Inference is serialised (one model, one accelerator); everything else (HTTP, status reads, submits) runs on other
threads, which torch leaves the interpreter to while it computes. A job's exception (out of memory, NaN, a bad
parameter for this model) makes that job FAILED with a readable error and the worker carries on. ``stop()``
interrupts the running job at its next step and puts it back in the queue, so a clean shutdown loses nothing.

On a shared store (Redis) many workers in many processes run the same queue: ``claim`` itself waits for work, and a
worker whose lease on a job ran out (``LeaseLost``: the job now runs elsewhere) drops its run without touching the
job. The job's request was parsed once at the edge and comes out of the store as a ``GenerationRequest``; the
pipeline's ``prepare`` applies the LoRA strength rules and switches the loaded (fused) LoRA in place, timed as
``lora_switch_s``; then it generates.

Tracing an image to SVG (``output_format: "svg"``) is up to a second of CPU work per image that needs no GPU: the
worker hands the decoded images to a small CPU thread pool and claims the next job at once. Either way a job is
settled by one call of ``_settle``, which records COMPLETED or FAILED once and tells the listeners once; a tracing
error FAILS the job with the reason.

A store error is never a model error (one rule for every store): a progress write that fails is skipped (the run
goes on); a result or failure that cannot be saved is kept and saved again until the store's ``settle_deadline``
(on Redis: while this worker's lease still holds), then the job is ``abandon``ed (on Redis the lease is dropped and
another worker runs the job again within about one lease; on SQLite it is FAILED with the store's reason).
At most ``2 x encode_threads`` jobs wait for tracing (beyond that the GPU loop waits); ``stop()`` lets the jobs
already handed over finish (they are a few seconds of work at most).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ..image_metadata import identity_of, image_metadata
from ..output_formats import encode_image, output_format
from ..request import GenerationRequest, ModelCannot, Prepared, RequestError
from .store import Job, JobStore, LeaseLost, StoreUnavailable, StoreWriteError

PROGRESS_PAUSE_S = 5.0  # after a progress write failed, the run skips progress writes this long
WorkerState = Literal["stopped", "idle", "loading", "busy"]

__all__ = ["GeneratingPipeline", "ModelCannot", "OutputError", "Worker", "describe_error"]


@runtime_checkable
class GeneratingPipeline(Protocol):
    """What a loaded model does with a request, as the worker and the serving processes use it:
    ``FluxVectorPipeline`` is one; tests pass fakes.

    - ``prepare(request)``: the request as this pipeline draws it (the LoRA strength rules applied once: no LoRA
      loaded serves strength 0 only, ``ModelCannot`` for an explicit other one) with the LoRA switched to its
      strength, and the seconds the switch took;
    - ``generate(request)``: returns an object with ``images`` (PIL), ``width``, ``height`` and ``timings`` (seconds
      by phase, ``total_s`` among them) and calls ``on_step(step, total)`` after each sampling step (which may raise
      to stop the run); it prepares the request itself, so a prepared one costs nothing more;
    - ``fuse_lora(log)``: fuse the LoRA into the weights where this pipeline can (True when fused);
    - ``warmup(sizes, log=...)``: one short generation at each size served, so the first job pays no first-call or
      compile cost."""

    def prepare(self, request: GenerationRequest) -> Prepared: ...

    def generate(
        self, request: GenerationRequest, *, progress: bool = True, on_step: Callable[[int, int], None] | None = None
    ) -> Any: ...

    def fuse_lora(self, log: Callable[[str], None] = ...) -> bool: ...

    def warmup(self, sizes: Any = None, *, log: Callable[[str], None] | None = None) -> Any: ...


class _Interrupted(Exception):
    """The worker is stopping: the running job goes back to the queue."""


class _Unsettled(Exception):
    """The end of a job could not be saved before the store's settle deadline: the job is given up (``abandon``)."""


class _Cancelled(Exception):
    """The running job was cancelled (it is FAILED in the store already): stop at this step."""


class OutputError(RuntimeError):
    """The image was generated but could not be encoded (e.g. tracing it to SVG failed)."""


@dataclass
class _Handoff:
    """The GPU part of a job is done: ``finish()`` (encode the images, complete the job) runs on the CPU pool."""

    finish: Callable[[], Job]


class Worker:
    """Runs queued jobs on ``pipeline`` (a ``GeneratingPipeline``, or a zero-argument factory of one, called lazily
    in the worker thread on the first job)."""

    def __init__(
        self,
        store: JobStore,
        pipeline: GeneratingPipeline | Callable[[], GeneratingPipeline],
        *,
        log: Callable[[str], None] | None = None,
        expire_every: float | None = None,
        progress_every: float = 0.5,
        idle_poll: float = 1.0,
        save_retry_s: float = 1.0,
        encode_threads: int | None = None,
    ):
        self.store = store
        self._pipeline: GeneratingPipeline | None = None
        self._factory: Callable[[], GeneratingPipeline] | None = None
        if isinstance(pipeline, GeneratingPipeline):
            self._pipeline = pipeline
        elif callable(pipeline):
            self._factory = pipeline
        else:
            raise TypeError(
                "pipeline must be a GeneratingPipeline (prepare, generate, fuse_lora, warmup) or a zero-argument "
                "factory of one"
            )
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.expire_every = expire_every if expire_every is not None else min(60.0, max(0.2, store.retention_s / 4))
        self.progress_every, self.idle_poll = progress_every, idle_poll
        self.save_retry_s = save_retry_s  # the pause between two tries to save a job's end
        self.state: WorkerState = "stopped"
        self.current_job: str | None = None
        self.load_error: str | None = None
        self._listeners: list[Callable[[Job], None]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._finished = threading.Condition()
        self._finished_count = 0
        self._thread: threading.Thread | None = None
        self._pipeline_lock = threading.Lock()
        self.encode_threads = encode_threads or max(1, min(4, os.cpu_count() or 1))
        self._encoders: ThreadPoolExecutor | None = None
        self._encode_slots = threading.BoundedSemaphore(2 * self.encode_threads)
        self._encoding: set[Future] = set()
        self._encoding_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- control
    def start(self) -> Worker:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self.state = "idle"
        self._thread = threading.Thread(target=self._loop, name="flux-vector-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop after the running job's current step (the job is requeued) and let the jobs already handed to the
        encoders finish. True when the thread has ended and no job is still encoding."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        alive = False
        if self._thread is not None:
            self._thread.join(timeout)
            alive = self._thread.is_alive()
            if not alive:
                self._thread, self.state = None, "stopped"
        with self._encoding_lock:
            pending = set(self._encoding)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        _, still = wait_futures(pending, timeout=left)
        if not alive and not still and self._encoders is not None:
            self._encoders.shutdown(wait=False)
            self._encoders = None
        return not alive and not still

    @property
    def encoding(self) -> int:
        """Jobs handed to the encoders (SVG tracing) and not settled yet."""
        with self._encoding_lock:
            return len(self._encoding)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify(self) -> None:
        """New work was submitted."""
        self._wake.set()

    def add_listener(self, callback: Callable[[Job], None]) -> None:
        """``callback(job)`` runs in the worker thread after each job reaches COMPLETED or FAILED."""
        self._listeners.append(callback)

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job is COMPLETED/FAILED or ``timeout`` passes; the job as it then is (None: gone)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._finished:
                seen = self._finished_count
            job = self.store.get(job_id)
            if job is None or job.finished:
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return job
            with self._finished:
                # a periodic re-check covers a store shared with other workers (Redis: jobs finished elsewhere)
                if self._finished_count == seen:
                    self._finished.wait(timeout=5.0 if left is None else min(left, 5.0))

    def load_pipeline(self) -> GeneratingPipeline:
        """The pipeline, loading it now if it was given as a factory (the worker does this on its first job)."""
        with self._pipeline_lock:
            if self._pipeline is None:
                assert self._factory is not None  # __init__ took a pipeline or a factory
                previous, self.state = self.state, "loading"
                try:
                    self._pipeline = self._factory()
                    self.load_error = None
                except Exception as exc:
                    self.load_error = f"{type(exc).__name__}: {exc}"
                    raise
                finally:
                    self.state = previous
            return self._pipeline

    @property
    def pipeline_loaded(self) -> bool:
        return self._pipeline is not None

    # ------------------------------------------------------------------------------------------- loop
    def _loop(self) -> None:
        next_expire = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_expire:
                    self.store.expire()
                    next_expire = time.monotonic() + self.expire_every
                job = self.store.claim()
            except Exception as exc:  # the store hiccupped (disk full, locked): keep serving
                self.log(f"worker: store error: {type(exc).__name__}: {exc}")
                self._stop.wait(1.0)
                continue
            if job is None:
                if not self.store.claim_blocks:  # a blocking claim already waited for work
                    self._wake.wait(timeout=max(0.0, min(self.idle_poll, next_expire - time.monotonic())))
                    self._wake.clear()
                continue
            self._process(job)
        self.state = "stopped"

    def _checkpoint(self) -> None:
        if self._stop.is_set():
            raise _Interrupted

    def _process(self, job: Job) -> None:
        self.state, self.current_job = "busy", job.id
        try:
            outcome = self._settle(job, lambda: self._run(job))
        finally:
            self.state, self.current_job = "idle", None
        if isinstance(outcome, _Handoff):
            self._hand_off(job, outcome)

    def _hand_off(self, job: Job, handoff: _Handoff) -> None:
        """Run ``handoff.finish`` on the encoder pool; waits while 2 x encode_threads jobs are already there."""
        self._encode_slots.acquire()
        if self._encoders is None:
            self._encoders = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="flux-vector-encode")

        def run() -> None:
            try:
                self._settle(job, handoff.finish)
            finally:
                self._encode_slots.release()

        with self._encoding_lock:
            future = self._encoders.submit(run)
            self._encoding.add(future)
        future.add_done_callback(self._encoded)

    def _encoded(self, future: Future) -> None:
        with self._encoding_lock:
            self._encoding.discard(future)

    def _settle(self, job: Job, step: Callable[[], Job | _Handoff]) -> Job | _Handoff | None:
        """Run ``step`` (the GPU part of a job, or the encoding it handed off) and record its end exactly once:
        COMPLETED or FAILED in the store, then the listeners. A ``_Handoff`` is returned as it is (not an end)."""
        finished: Job | None = None
        try:
            outcome = step()
            if isinstance(outcome, _Handoff):
                return outcome
            finished = outcome
        except LeaseLost as exc:
            self.log(f"worker: {exc}")
        except _Cancelled:
            self.log(f"worker: job {job.id} cancelled; stopped at its next step")
            _release_memory()
            finished = self.store.get(job.id)
        except _Unsettled as exc:
            finished = self._abandon(job, str(exc))
        except _Interrupted:
            self.log(f"worker: job {job.id} interrupted by shutdown; back in the queue")
            try:
                self.store.requeue(job.id)
            except Exception as exc:
                self.log(f"worker: could not requeue {job.id}: {exc} (recovery will run it again at start)")
        except Exception as exc:
            if isinstance(exc, self.store.store_errors):  # the store failed (e.g. its pre-run check), not the model
                error = self.store.describe_store_error(exc)
            else:
                error = describe_error(exc, job)
                if not isinstance(exc, (RequestError, ModelCannot, FloatingPointError, OutputError)):
                    self.log("".join(traceback.format_exception(exc)).rstrip())
            self.log(f"worker: job {job.id} FAILED: {error}")
            _release_memory()
            try:
                finished = self._save(job, "its failure", lambda: self.store.fail(job.id, error))
            except LeaseLost as lost:
                self.log(f"worker: {lost}")
            except _Unsettled as unsettled:
                self.log(f"worker: {unsettled}")
                finished = self._abandon(job, error)
        if finished is not None:
            with self._finished:
                self._finished_count += 1
                self._finished.notify_all()
            for callback in list(self._listeners):
                try:
                    callback(finished)
                except Exception as exc:
                    self.log(f"worker: listener error: {exc}")
        return finished

    def _save(self, job: Job, what: str, save: Callable[[], Job]) -> Job:
        """``save()`` (the store's complete or fail), tried again while it raises a store error and the store's
        settle deadline (as it was at the first error: at most one lease of retries, even where heartbeats still
        renew the lease) has not passed; ``_Unsettled`` naming the store's last error after that. ``LeaseLost``
        (another worker owns the job now) goes through at once."""
        deadline: float | None = None
        while True:
            try:
                saved = save()
            except self.store.store_errors as exc:
                error = self.store.describe_store_error(exc)
                if deadline is None:
                    deadline = self.store.settle_deadline(job.id)
                    left = max(deadline - time.monotonic(), 0.0)
                    self.log(f"worker: job {job.id}: could not save {what} ({error}); retrying for {left:.0f} s")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Unsettled(f"could not save {what} in time: {error}") from None
                if self._stop.wait(min(self.save_retry_s, left)):
                    raise _Unsettled(f"could not save {what} before the worker stopped: {error}") from None
                continue
            if deadline is not None:
                self.log(f"worker: job {job.id}: {what} saved after the store recovered")
            return saved

    def _abandon(self, job: Job, reason: str) -> Job | None:
        """Give up a job whose end could not be saved (``JobStore.abandon``): the job as recorded, or None."""
        self.log(f"worker: job {job.id} given up: {reason}")
        try:
            return self.store.abandon(job.id, reason)
        except LeaseLost as exc:
            self.log(f"worker: {exc}")
        except Exception as exc:
            self.log(
                f"worker: job {job.id} could not be recorded either ({self.store.describe_store_error(exc)}); "
                "it stays PROCESSING until the store's recovery runs it again"
            )
        return None

    def _run(self, job: Job) -> Job | _Handoff:
        self._checkpoint()
        if not self.store.shared:  # free space, a sound database: else the job FAILS now, with the reason
            self.store.check()  # (a shared store's fitness is /healthz's: a job is never failed for it)
        pipe = self.load_pipeline()
        self.state = "busy"
        request, switch_s = pipe.prepare(job.request)  # the strength rules and the LoRA switch, once
        last = [0.0]

        def on_step(step: int, total: int) -> None:
            self._checkpoint()
            if not self.store.still_running(job.id):
                raise _Cancelled
            now = time.monotonic()
            if step >= total or now - last[0] >= self.progress_every:
                last[0] = now
                try:
                    self.store.progress(job.id, step, total)
                except self.store.store_errors as exc:  # progress is not the result: skip it, the run goes on
                    last[0] = now + PROGRESS_PAUSE_S
                    self.log(
                        f"worker: job {job.id}: progress not saved ({self.store.describe_store_error(exc)}); "
                        f"generating on, next try in {PROGRESS_PAUSE_S:g} s"
                    )

        result = pipe.generate(request, progress=False, on_step=on_step)
        meta = {
            "echo": request.echo(),
            "width": result.width,
            "height": result.height,
            "ext": output_format(request.output_format).extension,
            "media_type": output_format(request.output_format).media_type,
            "inference_time": result.timings.get("total_s"),
            "timings": {k: round(float(v), 4) for k, v in result.timings.items()},
        }
        if switch_s is not None:
            meta["timings"]["lora_switch_s"] = round(switch_s, 6)

        identity = identity_of(pipe)

        def finish() -> Job:
            started = time.perf_counter()
            try:
                images = [
                    encode_image(
                        image,
                        request.output_format,
                        request.quality,
                        metadata=image_metadata(request, identity, batch_index=i, size=image.size),
                        **request.vector_options(),
                    )
                    for i, image in enumerate(result.images)
                ]
            except Exception as exc:
                raise OutputError(
                    f"encoding the image as {request.output_format} failed: {type(exc).__name__}: {exc}"
                ) from exc
            if request.output_format == "svg":
                meta["timings"]["vectorize_s"] = round(time.perf_counter() - started, 4)
            return self._save(job, "its result", lambda: self.store.complete(job.id, images, meta))

        # tracing to SVG needs no GPU: it runs on the encoder pool while the GPU starts the next job
        return _Handoff(finish) if request.output_format == "svg" else finish()


def describe_error(exc: BaseException, job: Job) -> str:
    """A human-readable reason for a FAILED job."""
    request = job.request
    size = f"{request.width}x{request.height}" if request.width is not None else f"aspect_ratio {request.aspect_ratio}"
    # the accelerator's out-of-memory (torch's OutOfMemoryError), never a store's (redis-py has one of that name)
    gpu_oom = any(
        cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch") for cls in type(exc).__mro__
    )
    if isinstance(exc, MemoryError) or gpu_oom:
        return (
            f"out of memory generating {size}, batch_size {request.batch_size}: {exc}. "
            "Try a smaller size or batch_size, or start the server with --quantize fp8 or nf4, or --offload group"
        )
    if isinstance(exc, FloatingPointError):
        return f"numerical error in the model: {exc}"
    if isinstance(exc, RequestError):
        return f"invalid parameters: {exc}"
    if isinstance(exc, (ModelCannot, OutputError, StoreWriteError, StoreUnavailable)):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"the model could not be loaded: {exc}"
    return f"model error ({type(exc).__name__}): {exc}"


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
