"""The Lua scripts of ``RedisJobStore``: every state change of a job runs as one script, atomically in Redis, and
checks the expected state and the owner's lease token before it writes (so a job has exactly one COMPLETED).

``KEYS``/``ARGV`` of each script are given above it; ``redis_store.py`` registers them once per connection.

**Time.** Every script that reads the time takes ``now`` in one ARGV: '' (production) means Redis's own clock
(``TIME``), one clock for a whole fleet; a number is the store's injected ``clock`` (tests: a clock they move by
hand). With an injected clock nothing may depend on time Redis keeps itself, so retention is by timestamp instead of
native key expiry (``_SETTLE``, ``EXPIRE``) and a lease's idle time is read from the job's ``heartbeat_at`` (or,
before its run starts, ``picked_at``: ``redis_fair.PICK``) instead of the stream entry's idle time (``CLAIM_STALE``).
"""


def lua_now(index: int) -> str:
    """Lua ``now()`` (seconds as a string, microseconds) and ``faked`` (a clock was injected) from ``ARGV[index]``."""
    return f"""
local faked = ARGV[{index}] ~= nil and ARGV[{index}] ~= ''
local function now()
  if faked then return ARGV[{index}] end
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
"""


# A settled job's retention (needs lua_now): ``expires_at`` in its hash, and on Redis's clock a native PEXPIRE of
# ``ttl`` ms too. With an injected clock Redis cannot know when the job expires: no native expiry (it would run on the
# real clock, not the injected one); readers compare ``expires_at`` with the clock and ``EXPIRE`` deletes the keys
_SETTLE = """
local function settle(key, ttl, ts)
  redis.call('HSET', key, 'expires_at', string.format('%.6f', tonumber(ts) + tonumber(ttl) / 1000))
  if not faked then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: seq, job, queued, stream, fair_users, fair_queue (this user's), fair_served
# ARGV: id, slug, params, max_queue (-1: none), retention_ms, user, max_queue_per_user (-1: none), model, lora, version
# now ('' for Redis's clock)
# (model/lora: what the accepting API process serves, '' for any; version: its flux_vector version)
SUBMIT = (
    lua_now(11)
    + """
if redis.call('EXISTS', KEYS[2]) == 1 then  -- a client retry of a submit that went through
  local rank = redis.call('ZRANK', KEYS[3], ARGV[1])
  return {rank or 0, redis.call('HGET', KEYS[2], 'created_at')}
end
local waiting = redis.call('ZCARD', KEYS[3])
local max_queue = tonumber(ARGV[4])
if max_queue >= 0 and waiting >= max_queue then return {-1, tostring(waiting)} end
local max_user = tonumber(ARGV[7])
if max_user >= 0 and redis.call('ZCARD', KEYS[6]) >= max_user then return {-2, tostring(waiting)} end
local ts = now()
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], 'slug', ARGV[2], 'params', ARGV[3], 'state', 'QUEUED', 'created_at', ts,
           'attempts', 0, 'seq', seq, 'retention_ms', ARGV[5], 'user', ARGV[6], 'model', ARGV[8], 'lora', ARGV[9],
           'version', ARGV[10])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[6], seq, ARGV[1])  -- fair share (redis_fair.py): this user's waiting jobs
if not redis.call('ZSCORE', KEYS[5], ARGV[6]) then  -- never served: before every served user, by first job
  local served = redis.call('HGET', KEYS[7], ARGV[6])
  redis.call('ZADD', KEYS[5], served and tonumber(served) or (seq - 1e15), ARGV[6])
end
redis.call('XADD', KEYS[4], '*', 'id', ARGV[1])
return {waiting, ts}
"""
)

# Whether the worker (its model, LoRA and version: '' when it does not say) can serve the job in hash ``key``: a
# job's '' asks for nothing; a job from before jobs recorded these fields asks for nothing either
_SERVES = """
local function serves(key, model, lora, version)
  local want = redis.call('HMGET', key, 'model', 'lora', 'version')
  local have = {model, lora, version}
  for i = 1, 3 do
    if want[i] and want[i] ~= '' and have[i] ~= '' and want[i] ~= have[i] then return false end
  end
  return true
end
"""

# KEYS: job, queued, processing, stream, failed
# ARGV: id, entry, token, worker, max_attempts, lease_ms, group, channel, model, lora, version, parked_idle_ms, now
START = (
    lua_now(13)
    + _SETTLE
    + _SERVES
    + """
local function drop_entry()
  redis.call('XACK', KEYS[4], ARGV[7], ARGV[2])
  redis.call('XDEL', KEYS[4], ARGV[2])
end
local state = redis.call('HGET', KEYS[1], 'state')
if not state then drop_entry() return {'gone'} end
if state == 'COMPLETED' or state == 'FAILED' then drop_entry() return {'done'} end
if not serves(KEYS[1], ARGV[9], ARGV[10], ARGV[11]) then
  -- not ours to run: parked (pending, idle "for a year") for the scan of a worker that can serve it
  redis.call('XCLAIM', KEYS[4], ARGV[7], ARGV[4], 0, ARGV[2], 'IDLE', ARGV[12], 'JUSTID')
  redis.call('HDEL', KEYS[1], 'picked_at')
  return {'mismatch', redis.call('HMGET', KEYS[1], 'model', 'lora', 'version')}
end
local ts = now()
if state == 'PROCESSING' then
  if redis.call('HGET', KEYS[1], 'owner') == ARGV[3] then return {'ok', state, redis.call('HGETALL', KEYS[1])} end
  local beat = tonumber(redis.call('HGET', KEYS[1], 'heartbeat_at') or '0')
  if (tonumber(ts) - beat) * 1000 < tonumber(ARGV[6]) then return {'alive'} end  -- its worker still renews it
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if state == 'PROCESSING' and attempts >= tonumber(ARGV[5]) then
  local err = 'a worker stopped (crashed, was killed or lost Redis for longer than its lease) while running this ' ..
              'job, ' .. attempts .. ' times; it was not retried again'
  local ttl = redis.call('HGET', KEYS[1], 'retention_ms')
  redis.call('HSET', KEYS[1], 'state', 'FAILED', 'finished_at', ts, 'error', err)
  redis.call('HDEL', KEYS[1], 'owner')
  settle(KEYS[1], ttl, ts)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[5], tonumber(ts) + tonumber(ttl) / 1000, ARGV[1])
  drop_entry()
  redis.call('PUBLISH', ARGV[8], ARGV[1])
  return {'failed', err}
end
local ran_on = redis.call('HGET', KEYS[1], 'ran_on')
redis.call('HSET', KEYS[1], 'state', 'PROCESSING', 'started_at', ts, 'heartbeat_at', ts, 'attempts', attempts + 1,
           'owner', ARGV[3], 'worker', ARGV[4], 'ran_on', ran_on and (ran_on .. ' ' .. ARGV[4]) or ARGV[4], 'step', 0)
redis.call('HDEL', KEYS[1], 'total_steps')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ts, ARGV[1])
return {'ok', state, redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: job, stream   ARGV: token, entry, group, consumer, now
HEARTBEAT = (
    lua_now(5)
    + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'PROCESSING' then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[2], 'JUSTID')
redis.call('HSET', KEYS[1], 'heartbeat_at', now())
return 1
"""
)

# KEYS: job   ARGV: token, step, total
PROGRESS = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'PROCESSING' then
  return 0
end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'total_steps', ARGV[3])
return 1
"""

# KEYS: job, processing, completed, stream, image keys...
# ARGV: id, token, entry, group, result, channel, now, images...
COMPLETE = (
    lua_now(7)
    + _SETTLE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
local owner = redis.call('HGET', KEYS[1], 'owner')
if state == 'COMPLETED' and owner == ARGV[2] then return {2} end  -- this run already completed it
if state ~= 'PROCESSING' or owner ~= ARGV[2] then return {0, state or 'gone'} end
local ttl = redis.call('HGET', KEYS[1], 'retention_ms')
local ts = now()
for i = 5, #KEYS do
  if faked then redis.call('SET', KEYS[i], ARGV[i + 3]) else redis.call('SET', KEYS[i], ARGV[i + 3], 'PX', ttl) end
end
redis.call('HSET', KEYS[1], 'state', 'COMPLETED', 'finished_at', ts, 'result', ARGV[5], 'images', #KEYS - 4)
redis.call('HDEL', KEYS[1], 'error')
settle(KEYS[1], ttl, ts)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(ts) + tonumber(ttl) / 1000, ARGV[1])
redis.call('XACK', KEYS[4], ARGV[4], ARGV[3])
redis.call('XDEL', KEYS[4], ARGV[3])
redis.call('PUBLISH', ARGV[6], ARGV[1])
return {1, ts}
"""
)

# KEYS: job, processing, failed, stream, queued
# ARGV: id, token ('' = no lease), entry, group, error, channel, fair queue key prefix, now
FAIL = (
    lua_now(8)
    + _SETTLE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
local owner = redis.call('HGET', KEYS[1], 'owner')
if not state then return {0, 'gone'} end
if ARGV[2] ~= '' then
  if state == 'FAILED' and owner == ARGV[2] then return {2} end
  if state ~= 'PROCESSING' or owner ~= ARGV[2] then return {0, state} end
elseif state == 'COMPLETED' or state == 'FAILED' then
  return {0, state}
end
local ttl = redis.call('HGET', KEYS[1], 'retention_ms')
local ts = now()
redis.call('HSET', KEYS[1], 'state', 'FAILED', 'finished_at', ts, 'error', ARGV[5])
settle(KEYS[1], ttl, ts)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', ARGV[7] .. (redis.call('HGET', KEYS[1], 'user') or ''), ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(ts) + tonumber(ttl) / 1000, ARGV[1])
if ARGV[3] ~= '' then
  redis.call('XACK', KEYS[4], ARGV[4], ARGV[3])
  redis.call('XDEL', KEYS[4], ARGV[3])
end
redis.call('PUBLISH', ARGV[6], ARGV[1])
return {1, ts}
"""
)

# KEYS: job, queued, processing, stream   ARGV: id, token, entry, group, consumer, idle_ms
REQUEUE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'state') ~= 'PROCESSING' then
  return 0
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '1')
redis.call('HSET', KEYS[1], 'state', 'QUEUED', 'attempts', math.max(attempts - 1, 0))
redis.call('HDEL', KEYS[1], 'owner', 'started_at', 'step', 'total_steps', 'heartbeat_at', 'picked_at')
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'seq'), ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XCLAIM', KEYS[4], ARGV[4], ARGV[5], 0, ARGV[3], 'IDLE', ARGV[6], 'JUSTID')
return 1
"""

# KEYS: queued, processing, completed, failed   ARGV: job key prefix, now
# Waiting and running jobs are counted by their hashes (one deleted by hand is not counted; HEAL drops it later);
# finished ones by their expiry time; read-only, so it answers while Redis is full
COUNTS = (
    lua_now(2)
    + """
local function live(key)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do n = n + redis.call('EXISTS', ARGV[1] .. id) end
  return n
end
local ts = now()
return {live(KEYS[1]), live(KEYS[2]),
        redis.call('ZCOUNT', KEYS[3], '(' .. ts, '+inf'), redis.call('ZCOUNT', KEYS[4], '(' .. ts, '+inf')}
"""
)

# KEYS: stream, tickets   ARGV: group, consumer, min_idle_ms, scan, model, lora, version, job key prefix, now
# Take over one pending entry idle for at least min_idle_ms (its worker died, or it was requeued or parked) whose job
# this worker can serve; entries of jobs it cannot serve are left where they are. An entry's job is the one its
# ticket is bound to (redis_fair.py), else the one it was added with. Returns {entry, id} or {}.
# With an injected clock the entries' idle time (Redis's clock) means nothing: every pending entry is a candidate, and
# one is alive (left alone) while its job is PROCESSING with a heartbeat_at, or QUEUED with a picked_at (a worker read
# and bound it and is about to start it: PICK), less than min_idle_ms before now. A requeued or parked job has no
# picked_at: taken at once, as its entry "idle for a year" is on Redis's clock.
CLAIM_STALE = (
    lua_now(9)
    + _SERVES
    + """
local min_idle = faked and 0 or ARGV[3]
local function alive(key)
  if not faked then return false end
  local state = redis.call('HGET', key, 'state')
  local field = (state == 'PROCESSING' and 'heartbeat_at') or (state == 'QUEUED' and 'picked_at')
  if not field then return false end
  local touched = tonumber(redis.call('HGET', key, field) or '')
  return touched ~= nil and (tonumber(now()) - touched) * 1000 < tonumber(ARGV[3])
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', min_idle, '-', '+', ARGV[4])
for _, p in ipairs(pending) do
  local entry = p[1]
  local found = redis.call('XRANGE', KEYS[1], entry, entry)
  local id = found[1] and (redis.call('HGET', KEYS[2], entry) or found[1][2][2])
  if not id then
    redis.call('XACK', KEYS[1], ARGV[1], entry)  -- its entry was deleted: nothing to run
  elseif redis.call('EXISTS', ARGV[8] .. id) == 0
      or (serves(ARGV[8] .. id, ARGV[5], ARGV[6], ARGV[7]) and not alive(ARGV[8] .. id)) then
    local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], min_idle, entry, 'JUSTID')
    if #got > 0 then return {entry, id} end
  end
end
return {}
"""
)

# KEYS: stream, queued, processing, completed, failed, tickets   ARGV: group, job key prefix
# Self-healing, run at a worker's start, when the stream or its group is missing, and with the housekeeping: the
# stream and the group are created when missing; every waiting or running job without an entry in the stream gets
# one (the queued index is the truth for what waits; START tells a live run from a dead one); index entries whose
# job hash is gone are dropped. Returns {entries added, index entries dropped}.
HEAL = """
local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local present = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local id = redis.call('HGET', KEYS[6], e[1]) or e[2][2]  -- a ticket stands for the job it is bound to
  if id then present[id] = true end
end
local added, dropped = 0, 0
for i = 2, 5 do
  for _, id in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    if redis.call('EXISTS', ARGV[2] .. id) == 0 then
      redis.call('ZREM', KEYS[i], id)
      if i <= 3 then dropped = dropped + 1 end  -- a finished job's expiry is not news
    elseif i <= 3 and not present[id] then
      redis.call('XADD', KEYS[1], '*', 'id', id)
      present[id] = true
      added = added + 1
    end
  end
end
return {added, dropped}
"""

# ARGV: command specs, each a count n then n words (the command and representative arguments)
# The commands (with our keys) this Redis user may not run: ACL refusals found at start, not at the first job
# (Redis < 7 has no redis.acl_check_cmd: nothing is found refused there; a command Redis does not know is skipped)
PERMISSIONS = """
local refused, i = {}, 1
if not redis.acl_check_cmd then return refused end
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local words = {}
  for j = 1, n do words[j] = ARGV[i + j] end
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(words))
  if ok and not allowed then table.insert(refused, words[1]) end
  i = i + n + 1
end
return refused
"""

# KEYS: completed, failed   ARGV: now, job key prefix, image key prefix
# The finished jobs whose expiry time has come leave the indexes, and their hash and images are deleted (on Redis's
# clock native key expiry deleted them already; with an injected clock this is what deletes them). Returns how many.
EXPIRE = (
    lua_now(1)
    + """
local ts = now()
local removed = 0
for k = 1, 2 do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ts)) do
    local images = tonumber(redis.call('HGET', ARGV[2] .. id, 'images') or '0')
    for i = 0, images - 1 do redis.call('DEL', ARGV[3] .. id .. ':' .. i) end
    redis.call('DEL', ARGV[2] .. id)
    removed = removed + redis.call('ZREM', KEYS[k], id)
  end
end
return removed
"""
)
