import os

import pytest


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
