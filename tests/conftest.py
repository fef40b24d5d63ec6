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
