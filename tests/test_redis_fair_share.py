"""Fair share on the Redis store beyond the contract suite: the queued index stays the truth for what waits, so a
queued job that no per-user index holds (queued by a version before fair share, or its index entry lost) still runs,
and a worker that dies between binding its ticket and starting the job leaves that job to the next worker."""

from __future__ import annotations

import time

import pytest

from flux_vector.jobs import COMPLETED, QUEUED
from flux_vector.jobs.redis_store import RedisJobStore
from flux_vector.request import parse_request
from tests.job_data import META, P, png

pytestmark = pytest.mark.redis
REDIS_DB = 5  # test_redis_store.py uses 3, test_store_contract.py 4


@pytest.fixture
def stores(redis_server):
    redis_server.client(db=REDIS_DB).flushdb()
    opened: list[RedisJobStore] = []

    def open_store(**kwargs) -> RedisJobStore:
        kwargs.setdefault("claim_block_s", 0.05)
        store = RedisJobStore.from_url(redis_server.url(REDIS_DB), **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def test_a_queued_job_outside_the_user_indexes_still_runs_after_theirs(stores):
    store = stores()
    old = store.submit("s", parse_request(P), user="alice")
    store.r.delete(store.key("fair:q:alice"), store.key("fair:users"))  # as if queued before fair share
    new = store.submit("s", parse_request(P), user="bob")
    assert store.claim().id == new.id  # the indexed one first
    job = store.claim()
    assert job.id == old.id and store.get(old.id).state != QUEUED
    store.complete(old.id, [png()], META)
    assert store.get(old.id).state == COMPLETED and store.claim() is None


def test_a_ticket_bound_by_a_worker_that_died_runs_its_job_on_the_next(stores):
    dead = stores(lease_s=0.3, name="dead")
    job = dead.submit("s", parse_request(P), user="alice")
    entry = dead._next_entry(0.1)  # read and bound, then the process "dies" before starting the job
    bound = dead._pick(
        keys=[dead._tickets, dead._fair_users, dead._fair_served, dead._fair_tick, dead._queued, dead._stream],
        args=[entry[0], dead.key("job:"), dead._fair_queue_prefix, "workers"],
    )
    assert bound.decode() == job.id and dead.get(job.id).state == QUEUED
    other = stores(lease_s=0.3, name="next")
    other.submit("s", parse_request(P), user="bob")  # a fresh ticket must not take alice's bound job
    first = other.claim()
    assert first is not None and first.user == "bob"
    time.sleep(0.4)  # the dead worker's entry idles past the lease
    taken = other.claim()
    assert taken is not None and taken.id == job.id
