import inspect
import os
import shutil
from pathlib import Path

import pytest

# What makes a test ``slow`` (the fast tier is ``pytest -m "not slow"``): it starts a process (a server, the CLI, a
# worker, a Python interpreter) or drives a browser. Files made of such tests say so with ``pytestmark``; a test
# elsewhere that does it itself (or through a fixture) is marked here, so a new one lands in the right tier.
SLOW_SIGNS = ("ServerProcess(", "CliProcess(", "WorkerProcess(", "subprocess.run(", "sync_playwright")


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") or not hasattr(item, "function"):
            continue
        fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if any(sign in _source(f) for f in (item.function, *fixtures) for sign in SLOW_SIGNS):
            item.add_marker(pytest.mark.slow)


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
