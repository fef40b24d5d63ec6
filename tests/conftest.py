import functools
import inspect
import os
import shutil
import sys
from pathlib import Path

import pytest

# What makes a test ``slow`` (the fast tier is ``pytest -m "not slow"``): it starts a process (a server, the CLI, a
# worker, a Python interpreter) or drives a browser. Files made of such tests say so with ``pytestmark``; a test
# elsewhere that does it itself, through a fixture or through a ``tests/`` helper it names (``cli()``) is marked here,
# so a new one lands in the right tier.
SLOW_SIGNS = ("ServerProcess(", "CliProcess(", "WorkerProcess(", "ApiProcess(", "subprocess.run(", "sync_playwright")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, plus one. Many tests here wait rather than compute (on a server process
    starting, a Redis outage, a lease running out), and the extra worker fills the core such a wait leaves idle."""
    return (os.cpu_count() or 1) + 1


def pytest_configure(config):
    """Under pytest-xdist (the README's ``-n auto``), each worker process gets its share of the cores for torch and
    for the processes its tests start (``OMP_NUM_THREADS``, inherited), so that two workers do not each run two
    threads per core; a value the user set wins. Everything else a test uses is per worker already: ``tmp_path``,
    the session fixtures (cache folder, tiny checkpoint, ``redis_server``), free ports (``free_port()``)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        if "torch" in sys.modules:  # imported before this hook (a plugin): too late for the variable
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@functools.cache  # the same fixtures stand behind thousands of tests
def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _helpers(function, module) -> list:
    """The test helpers (functions and classes of ``tests/``) that ``function`` names: ``cli(...)``, ``Hooked(...)``."""
    names = getattr(getattr(function, "__code__", None), "co_names", ())
    named = [getattr(module, name, None) for name in names]
    return [h for h in named if (inspect.isfunction(h) or inspect.isclass(h)) and h.__module__.startswith("tests.")]


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") or not hasattr(item, "function"):
            continue
        fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        sources = [item.function, *fixtures, *_helpers(item.function, item.module)]
        if any(sign in _source(f) for f in sources for sign in SLOW_SIGNS):
            item.add_marker(pytest.mark.slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _slow_files_first(items)


def _slow_files_first(items) -> None:
    """Under ``--dist loadfile --no-loadscope-reorder`` (pyproject's addopts) a worker takes one file at a time in
    collection order. The files with slow tests (processes, servers, Redis clusters) go first, so that the run does
    not end on one worker finishing a long file while the other waits (xdist's own reorder, most tests first, put
    the few long tests of small files such as test_batch_cli.py last). The order within a file is kept."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: collection order otherwise


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Build the tiny checkpoint into a per-run cache, never the user's ~/.cache, and never reach a hub."""
    os.environ.setdefault("FLUX_VECTOR_CACHE", str(tmp_path_factory.mktemp("flux_vector_cache")))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture(scope="session")
def tiny_dir(_isolated_cache):
    from flux_vector.tiny import tiny_checkpoint_dir

    return tiny_checkpoint_dir()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    from flux_vector import FluxVectorPipeline

    return FluxVectorPipeline.from_pretrained("tiny", log=lambda *_: None)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real ``redis-server`` for the whole run (each test file flushes its own database)."""
    from tests.redis_cluster import RedisServer, require_redis

    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def app_client(tmp_path):
    """The app in-process (``create_app``) over a SQLite store and a ``FakePipeline`` worker."""
    from fastapi.testclient import TestClient

    from flux_vector.jobs import SQLiteJobStore, Worker
    from flux_vector.server.app import create_app
    from tests.fake_pipeline import FakePipeline

    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    store.recover()
    worker = Worker(store, FakePipeline(), log=lambda message: None)
    with TestClient(create_app(store, worker, log=lambda message: None), base_url="http://localhost") as client:
        yield client
    store.close()


@pytest.fixture
def engine(tmp_path):
    """``engine(**configure_settings)``: a fresh in-process facade engine; ``configure()`` again at the end."""
    import time

    import flux_vector
    from flux_vector import facade

    def setup(**kwargs):
        flux_vector.configure(store_dir=tmp_path / f"store-{time.monotonic_ns()}", **kwargs)
        return facade.local.local_engine()

    yield setup
    flux_vector.configure()


# The browser tests (test_playground.py, test_api_docs.py) drive Debian's ``chromium`` through the ``playwright``
# Python package: no ``playwright install``, no browser download.
CHROMIUM = os.environ.get("FLUX_VECTOR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; skips (fails under CI, where it must be installed) when the browser stack is missing."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install playwright)")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so they must be installed")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def browser(chromium):
    """A headless Chromium for one test (launched before the test's other fixtures when named first), closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
