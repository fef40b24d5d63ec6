"""Prometheus metrics of a process that serves the queue: the HTTP API (``flux-vector serve``) or a GPU worker
(``flux-vector worker``). One ``JobMetrics`` per process, its own registry.

Counters and histograms count what *this process* did (jobs its worker finished, submits its API accepted or
refused); the ``flux_vector_jobs`` / ``flux_vector_queue_depth`` gauges are read from the store at scrape time, so on
a shared store every process reports the whole queue.
"""

from __future__ import annotations

import time
from typing import Any

from .store import COMPLETED, QUEUED, Job, JobStore


class JobMetrics:
    def __init__(self, store: JobStore, worker: Any = None, *, pipeline_info: Any = None, api: bool = True):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry = CollectorRegistry()
        self.finished_total = Counter(
            "flux_vector_jobs_finished", "Jobs finished by this process, by final state", ["state"], registry=registry
        )
        self.inference_seconds = Histogram(
            "flux_vector_inference_seconds",
            "Model compute seconds per completed job",
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300),
        )
        self.queue_seconds = Histogram(
            "flux_vector_queue_seconds",
            "Seconds a job waited in the queue before it ran",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
        )
        self.lora_switch_seconds = Histogram(
            "flux_vector_lora_switch_seconds",
            "Seconds to switch the loaded LoRA to a job's lora_strength",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
        )
        api_registry = registry if api else None  # a worker process accepts no submits
        self.submitted_total = Counter(
            "flux_vector_jobs_submitted", "Jobs this API process accepted", registry=api_registry
        )
        self.rejected_total = Counter(
            "flux_vector_jobs_rejected",
            "Submits this API process refused, by reason",
            ["reason"],
            registry=api_registry,
        )
        # per user (the name of the key, never the key): what this API process accepted, refused and cancelled
        self.user_submitted_total = Counter(
            "flux_vector_user_jobs_submitted",
            "Jobs this API process accepted, by user",
            ["user"],
            registry=api_registry,
        )
        self.user_rejected_total = Counter(
            "flux_vector_user_jobs_rejected",
            "Submits this API process refused with a 429, by user and reason",
            ["user", "reason"],
            registry=api_registry,
        )
        self.cancelled_total = Counter(
            "flux_vector_jobs_cancelled",
            "Jobs cancelled through this API process (DELETE), by user",
            ["user"],
            registry=api_registry,
        )
        registry.register(_StoreCollector(store, worker, pipeline_info))

    def inference_mean(self) -> tuple[float, float]:
        """(count, sum) of the model seconds of the jobs this process's worker completed."""
        count = total = 0.0
        for metric in self.inference_seconds.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
        return count, total

    def on_finished(self, job: Job) -> None:
        """A worker listener: count a job this process's worker finished."""
        self.finished_total.labels(job.state).inc()
        if job.state == COMPLETED and job.result.get("inference_time") is not None:
            self.inference_seconds.observe(job.result["inference_time"])
        switch = job.result.get("timings", {}).get("lora_switch_s")
        if switch is not None:
            self.lora_switch_seconds.observe(switch)
        if job.started_at is not None:
            self.queue_seconds.observe(max(0.0, job.started_at - job.created_at))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StoreCollector:
    """Gauges read from the store (and this process's worker) at scrape time."""

    def __init__(self, store: JobStore, worker: Any = None, pipeline_info: Any = None):
        self.store, self.worker, self.pipeline_info = store, worker, pipeline_info

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counts = self.store.counts()
        jobs = GaugeMetricFamily(
            "flux_vector_jobs", "Jobs in the store by state (finished ones until they expire)", labels=["state"]
        )
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily("flux_vector_queue_depth", "Jobs waiting to run (QUEUED)", value=counts[QUEUED])
        if self.worker is not None:
            yield GaugeMetricFamily(
                "flux_vector_worker_busy",
                "1 while the worker runs a job",
                value=1.0 if self.worker.state == "busy" else 0.0,
            )
        if self.store.shared:
            yield GaugeMetricFamily(
                "flux_vector_workers",
                "Workers renewing their entry in the shared store",
                value=len(self.store.workers()),
            )
        stats = self.store.stats
        if self.worker is not None and stats:
            for name, help_text in (
                ("reclaimed", "Jobs this worker took over after another worker's lease ran out"),
                ("leases_lost", "Runs this worker dropped because its lease ran out (the job ran elsewhere)"),
                ("failed_after_attempts", "Jobs this worker FAILED because every attempt's worker had died"),
                ("abandoned", "Jobs this worker gave up because it could not save their end while its lease held"),
                ("left_for_others", "Jobs this worker left queued: another model, LoRA or version asked for"),
                ("healed", "Stream entries this worker added again, and index entries of vanished jobs it dropped"),
            ):
                yield CounterMetricFamily(f"flux_vector_{name}", help_text, value=stats.get(name, 0))
        if self.pipeline_info is not None:
            info = self.pipeline_info()
            if info.get("lora_strength") is not None:
                yield GaugeMetricFamily(
                    "flux_vector_lora_strength", "The loaded LoRA's current strength", value=info["lora_strength"]
                )
                yield GaugeMetricFamily(
                    "flux_vector_lora_fused",
                    "1 when the LoRA is fused into the weights",
                    value=1.0 if info.get("fused") else 0.0,
                )
        yield GaugeMetricFamily("flux_vector_scrape_timestamp_seconds", "Time of this scrape", value=time.time())
