"""Fair share on the Redis store: which queued job a worker's stream entry runs.

The stream (``queue``) still delivers work and carries the leases: one entry is added per submitted job, handed to
exactly one worker by the consumer group, renewed while it runs and taken over when its worker dies. What changes is
that an entry is a *ticket* for "the next job", not for the job it was added with: when a worker reads a fresh
entry, ``PICK`` chooses the job the fair order says is next and binds the entry to it (``fair:tickets``, entry -> job
id, and the job's ``ticket`` field); a taken-over or requeued entry stays bound to its job. There is one ticket per
submitted job, so every queued job finds one; a ticket with nothing left to run is dropped.

The fair order: ``fair:q:<user>`` holds each user's waiting jobs that no ticket is bound to (scored by submit order),
``fair:users`` the users that have some, scored by when each was last served (``fair:served``, a ``fair:tick``
counter; a user never served scores its first job's seq - 1e15: before the served ones, by first job). ``PICK``
takes the least recently served user's oldest job: users take turns, first in first out within a user. These keys
only order the work: ``queued`` (id -> seq) stays the truth for what waits. A queued job that no user index holds
and no live ticket is bound to (queued by an older version, or an index entry lost) is picked from ``queued`` in
submit order once the user indexes are empty.
"""

from __future__ import annotations

from .redis_scripts import lua_now

# KEYS: tickets, fair_users, fair_served, fair_tick, queued, stream
# ARGV: entry, job key prefix, fair queue key prefix, group, now ('' for Redis's clock)
# The job returned gets ``picked_at`` (now): on an injected clock, what keeps its entry from being taken over as
# stale between this pick and the run's start (redis_scripts.CLAIM_STALE).
PICK = (
    lua_now(5)
    + """
local function live_ticket(id)
  local ticket = redis.call('HGET', ARGV[2] .. id, 'ticket')
  if not ticket or redis.call('HGET', KEYS[1], ticket) ~= id then return false end
  return #redis.call('XPENDING', KEYS[6], ARGV[4], ticket, ticket, 1) > 0
end
local function bind(id)
  redis.call('HSET', KEYS[1], ARGV[1], id)
  redis.call('HSET', ARGV[2] .. id, 'ticket', ARGV[1], 'picked_at', now())
  return id
end
local bound = redis.call('HGET', KEYS[1], ARGV[1])
if bound then
  local state = redis.call('HGET', ARGV[2] .. bound, 'state')
  if state == 'QUEUED' then redis.call('HSET', ARGV[2] .. bound, 'picked_at', now()) end
  if state == 'QUEUED' or state == 'PROCESSING' then return bound end
  redis.call('HDEL', KEYS[1], ARGV[1])
  return false
end
for _ = 1, 1000 do
  local top = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #top == 0 then break end
  local user = top[1]
  local waiting = ARGV[3] .. user
  local ids = redis.call('ZRANGE', waiting, 0, 0)
  if #ids == 0 then
    redis.call('ZREM', KEYS[2], user)
  else
    local id = ids[1]
    redis.call('ZREM', waiting, id)
    local tick = redis.call('INCR', KEYS[4])
    redis.call('HSET', KEYS[3], user, tick)
    if redis.call('ZCARD', waiting) == 0 then
      redis.call('ZREM', KEYS[2], user)
    else
      redis.call('ZADD', KEYS[2], tick, user)
    end
    if redis.call('HGET', ARGV[2] .. id, 'state') == 'QUEUED' and not live_ticket(id) then return bind(id) end
  end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, 99)) do
  local user = redis.call('HGET', ARGV[2] .. id, 'user') or ''
  if not redis.call('ZSCORE', ARGV[3] .. user, id) and not live_ticket(id) then return bind(id) end
end
return false
"""
)
