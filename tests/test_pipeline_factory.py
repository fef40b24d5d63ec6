"""The pipeline plugin point (``FLUX_VECTOR_PIPELINE_FACTORY``) and the fault-injecting test pipeline it serves."""

import sys
import time
import types

import pytest

from flux_vector.jobs import QUEUED, SQLiteJobStore, Worker
from flux_vector.jobs.worker import GeneratingPipeline
from flux_vector.models import DEFAULT_LORA
from flux_vector.pipeline import load_pipeline
from flux_vector.pipeline_factory import FACTORY_ENV
from flux_vector.request import parse_request
from tests.fake_pipeline import FAULTS_ENV, FakePipeline, FaultInjectingPipeline, with_fault_markers

P = {"prompt": "v3ct0r style, a cat", "width": 64, "height": 64, "steps": 2}


def request(prompt: str):
    return parse_request({**P, "prompt": prompt})


def test_fault_markers_fail_or_stall_and_otherwise_pass_through():
    inner = FakePipeline()
    pipe = with_fault_markers(inner)
    with pytest.raises(FloatingPointError, match="simulated"):
        pipe.generate(request("a [[fault:nan]] cat"))
    with pytest.raises(MemoryError):
        pipe.generate(request("[[fault:oom]]"))
    assert inner.calls == []  # a fault acts before the model runs
    steps = []
    started = time.monotonic()
    result = pipe.generate(request("[[fault:sleep=0.1]] ok"), on_step=lambda step, total: steps.append((step, total)))
    assert time.monotonic() - started >= 0.1 and result.width == 64 and len(inner.calls) == 1
    assert steps[0] == (0, 2) and steps[-2:] == [(1, 2), (2, 2)]  # the sleep reports step 0, then the real steps
    assert pipe.lora == "fake-lora" and pipe.step_s == 0.0  # everything else is the wrapped pipeline's


def test_a_stopping_worker_interrupts_a_stalled_job(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    worker = Worker(store, with_fault_markers(FakePipeline()), log=lambda m: None, idle_poll=0.05).start()
    try:
        job = store.submit("s", parse_request({**P, "prompt": "[[fault:sleep=30]] hold"}))
        worker.notify()
        deadline = time.monotonic() + 10
        while worker.current_job != job.id and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert worker.stop(timeout=10) and time.monotonic() - started < 5
        assert store.get(job.id).state == QUEUED
    finally:
        worker.stop()
        store.close()


def test_the_environment_variable_names_the_factory(monkeypatch):
    module = types.ModuleType("flux_vector_test_factory")
    module.made = []
    module.build = lambda model, **options: module.made.append((model, options)) or FakePipeline()
    module.not_callable = 42
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setenv(FACTORY_ENV, f"{module.__name__}:build")
    log = print
    assert isinstance(load_pipeline("tiny", lora="none", device="cpu", log=log), FakePipeline)
    assert isinstance(load_pipeline("tiny", log=log), FakePipeline)  # the defaults filled in, as for from_pretrained
    assert module.made == [
        ("tiny", {"lora": "none", "log": log, "device": "cpu"}),
        ("tiny", {"lora": DEFAULT_LORA, "log": log}),
    ]
    for spec, problem in (
        ("no_colon", "must be 'package.module:callable'"),
        (":build", "must be"),
        ("flux_vector_no_such_module:x", "ModuleNotFoundError"),
        (f"{module.__name__}:missing", "AttributeError"),
        (f"{module.__name__}:not_callable", "names int, not a callable"),
    ):
        monkeypatch.setenv(FACTORY_ENV, spec)
        with pytest.raises(ValueError, match=problem):
            load_pipeline("tiny")


def test_the_test_suites_factory_wraps_the_real_pipeline(monkeypatch, tiny_dir):
    monkeypatch.setenv(FACTORY_ENV, FAULTS_ENV[FACTORY_ENV])
    pipe = load_pipeline("tiny", log=lambda *_: None)
    assert isinstance(pipe, FaultInjectingPipeline) and pipe.lora is not None and pipe.lora_strength == 1.0
    assert isinstance(pipe, GeneratingPipeline) and isinstance(with_fault_markers(FakePipeline()), GeneratingPipeline)
    pipe.set_lora_strength(0.5)
    assert pipe.inner.lora.strength == 0.5
    with pytest.raises(MemoryError, match="out of memory"):
        pipe.generate(request("[[fault:oom]] a cat"))
