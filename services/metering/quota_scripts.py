"""The Redis Lua scripts behind real-time quotas. Each runs atomically, so no two callers ever see
the same remaining allowance.

Keys of one tenant share the hash tag `{tenant}`, so a script touches one cluster slot:
  quota  `<p>{t}:quota:<month>`   hash: ready, tier, used:<meter>, reserved:<meter>, limit:<meter>,
                                 hard:<meter>
  holds  `<p>{t}:holds:<month>`   sorted set: reservation id scored by its expiry (ms)
  hold   `<p>{t}:hold:<id>`       hash: state (open|committed|released|expired), meter, quantity,
                                 expire, month; kept a day past its expiry so retries stay idempotent
  applied `<p>{t}:applied:<month>:<batch>`  set once a batch's deltas are counted
A quota hash without `ready` has not been built from Postgres yet (after a Redis restart or flush,
or a plan change): scripts answer `rebuild` and count nothing until it is.
Numbers leave Lua as strings, since Lua numbers become integers in replies. RESERVE, COMMIT,
STATUS and their batch forms (RESERVE_MANY, COMMIT_MANY) answer one string of space-separated words
(no word holds a space) rather than an array: the client parses one reply element instead of
eight, a good part of a Reserve's cost in Python.
"""

from __future__ import annotations

_COMMON = """
local function words(t)
  return table.concat(t, ' ')
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Holds past their expiry give their quantity back.
local function purge(quota, holds, hold_prefix, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do
    local hold = hold_prefix .. id
    if redis.call('HGET', hold, 'state') == 'open' then
      local meter = redis.call('HGET', hold, 'meter')
      redis.call('HINCRBYFLOAT', quota, 'reserved:' .. meter, -tonumber(redis.call('HGET', hold, 'quantity')))
      redis.call('HSET', hold, 'state', 'expired')
    end
    redis.call('ZREM', holds, id)
  end
end

local function status(quota, meter)
  local v = redis.call('HMGET', quota, 'used:' .. meter, 'reserved:' .. meter,
                       'limit:' .. meter, 'hard:' .. meter, 'tier')
  return {v[1] or '0', v[2] or '0', v[3] or '-1', v[4] or '0', v[5] or '0'}
end

-- Adds a batch's deltas (month, meter, quantity triples from index `first`) once per month: the
-- month's `applied` key is set by its first delta, and every delta of that month counts only if
-- this call set it (a batch with several meters in one month has one delta per meter).
local function apply(quota_prefix, applied_prefix, batch, first)
  local applied, fresh = {}, {}
  for i = first, #ARGV, 3 do
    local month, meter, qty = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local quota = quota_prefix .. month
    if redis.call('HGET', quota, 'ready') == '1' then
      if fresh[month] == nil then
        local mark = applied_prefix .. month .. ':' .. batch
        fresh[month] = redis.call('SET', mark, '1', 'NX', 'EX', 86400) ~= false
        applied[#applied + 1] = month
      end
      if fresh[month] then
        redis.call('HINCRBYFLOAT', quota, 'used:' .. meter, qty)
      end
    end
  end
  return applied
end
"""

# Takes one hold (its key `hold`, under `hold_prefix`) if the meter allows it; the eight words of
# its answer: outcome (held|exists|refused), state, expire, then the meter's status. The month's
# counters are built and purged by the caller.
_RESERVE_ONE = """
local function reserve_one(quota, holds, hold, hold_prefix, month, meter, qty, ttl, now)
  local id = string.sub(hold, #hold_prefix + 1)
  local state = redis.call('HGET', hold, 'state')
  if state then
    local s = status(quota, redis.call('HGET', hold, 'meter'))
    return {'exists', state, redis.call('HGET', hold, 'expire'), s[1], s[2], s[3], s[4], s[5]}
  end
  local s = status(quota, meter)
  local used, reserved, limit = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
  if s[4] == '1' and limit >= 0 and used + reserved + qty > limit then
    return {'refused', '-', '0', s[1], s[2], s[3], s[4], s[5]}
  end
  local expire = now + ttl
  redis.call('HINCRBYFLOAT', quota, 'reserved:' .. meter, qty)
  redis.call('ZADD', holds, expire, id)
  redis.call('HSET', hold, 'state', 'open', 'meter', meter, 'quantity', qty, 'expire', expire, 'month', month)
  redis.call('PEXPIRE', hold, ttl + 86400000)
  s = status(quota, meter)
  return {'held', 'open', tostring(expire), s[1], s[2], s[3], s[4], s[5]}
end
"""

# KEYS: quota, holds, hold. ARGV: meter, quantity, ttl_ms. The reservation id ends the hold key
# and the month ends the quota key (neither holds a ':'), so they are not sent again as arguments.
RESERVE = (
    _COMMON
    + _RESERVE_ONE
    + """
local quota, holds, hold = KEYS[1], KEYS[2], KEYS[3]
local id = string.match(hold, '[^:]+$')
local hold_prefix = string.sub(hold, 1, #hold - #id)
local month = string.match(quota, '[^:]+$')
if redis.call('HGET', quota, 'ready') ~= '1' then return 'rebuild' end
local now = now_ms()
purge(quota, holds, hold_prefix, now)
return words(reserve_one(quota, holds, hold, hold_prefix, month, ARGV[1], tonumber(ARGV[2]),
                         tonumber(ARGV[3]), now))
"""
)

# KEYS: quota, holds, then one hold key per hold (all of one tenant, so one slot). ARGV: meter,
# quantity, ttl_ms per hold. Each hold as RESERVE takes it, in order, in one atomic step (a hold
# refused does not stop the next); eight words per hold, as RESERVE answers.
RESERVE_MANY = (
    _COMMON
    + _RESERVE_ONE
    + """
local quota, holds = KEYS[1], KEYS[2]
local id = string.match(KEYS[3], '[^:]+$')
local hold_prefix = string.sub(KEYS[3], 1, #KEYS[3] - #id)
local month = string.match(quota, '[^:]+$')
if redis.call('HGET', quota, 'ready') ~= '1' then return 'rebuild' end
local now = now_ms()
purge(quota, holds, hold_prefix, now)
local reply = {}
for i = 3, #KEYS do
  local a = (i - 3) * 3
  for _, w in ipairs(reserve_one(quota, holds, KEYS[i], hold_prefix, month, ARGV[a + 1],
                                 tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), now)) do
    reply[#reply + 1] = w
  end
end
return words(reply)
"""
)

# KEYS: hold. ARGV: quota_prefix, holds_prefix, hold_prefix, applied_prefix, the current month,
# the meter to report, batch, then deltas. Settles the hold and counts the batch in one step, so the
# quantity never leaves `reserved` before it is in `used`: no other Reserve can slip into the gap.
# Answers `settled <state> <status of the meter this month, or five '-' if its counters are not
# built> <months counted>...`: the status is what STATUS would say next, without its round trip.
COMMIT = (
    _COMMON
    + """
local hold = KEYS[1]
local quota_prefix, holds_prefix, hold_prefix = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', hold, 'state') or 'missing'
local month = redis.call('HGET', hold, 'month')
if month and redis.call('HGET', quota_prefix .. month, 'ready') ~= '1' then return 'rebuild ' .. month end
local now = now_ms()
if month then purge(quota_prefix .. month, holds_prefix .. month, hold_prefix, now) end
state = redis.call('HGET', hold, 'state') or 'missing'
local applied = apply(quota_prefix, ARGV[4], ARGV[7], 8)
if state == 'open' then
  local meter = redis.call('HGET', hold, 'meter')
  local qty = tonumber(redis.call('HGET', hold, 'quantity'))
  redis.call('HINCRBYFLOAT', quota_prefix .. month, 'reserved:' .. meter, -qty)
  redis.call('ZREM', holds_prefix .. month, string.match(hold, '[^:]+$'))
  redis.call('HSET', hold, 'state', 'committed')
end
local reply = {'settled', state}
local current = quota_prefix .. ARGV[5]
if redis.call('HGET', current, 'ready') == '1' then
  if ARGV[5] ~= month then purge(current, holds_prefix .. ARGV[5], hold_prefix, now) end
  for _, v in ipairs(status(current, ARGV[6])) do reply[#reply + 1] = v end
else
  for _ = 1, 5 do reply[#reply + 1] = '-' end
end
for _, m in ipairs(applied) do reply[#reply + 1] = m end
return words(reply)
"""
)

# KEYS: one hold key per hold (all of one tenant). ARGV: quota_prefix, holds_prefix, hold_prefix,
# applied_prefix, the current month, batch, one meter to report per hold, then the deltas of the
# batch that holds every hold's events. COMMIT for several holds in one atomic step: the batch is
# counted once and every hold settled with it, in order (a hold named twice is settled by the
# first). Answers `settled`, then per hold its state and the status of its meter this month (five
# '-' if not built), then the months counted.
COMMIT_MANY = (
    _COMMON
    + """
local quota_prefix, holds_prefix, hold_prefix = ARGV[1], ARGV[2], ARGV[3]
local months = {}
for i = 1, #KEYS do
  local month = redis.call('HGET', KEYS[i], 'month')
  if month then
    if redis.call('HGET', quota_prefix .. month, 'ready') ~= '1' then return 'rebuild ' .. month end
    months[month] = true
  end
end
local now = now_ms()
for month in pairs(months) do purge(quota_prefix .. month, holds_prefix .. month, hold_prefix, now) end
local applied = apply(quota_prefix, ARGV[4], ARGV[6], 7 + #KEYS)
local states = {}
for i = 1, #KEYS do
  local hold = KEYS[i]
  local state = redis.call('HGET', hold, 'state') or 'missing'
  if state == 'open' then
    local month, meter = redis.call('HGET', hold, 'month'), redis.call('HGET', hold, 'meter')
    local qty = tonumber(redis.call('HGET', hold, 'quantity'))
    redis.call('HINCRBYFLOAT', quota_prefix .. month, 'reserved:' .. meter, -qty)
    redis.call('ZREM', holds_prefix .. month, string.sub(hold, #hold_prefix + 1))
    redis.call('HSET', hold, 'state', 'committed')
  end
  states[i] = state
end
local reply = {'settled'}
local current = quota_prefix .. ARGV[5]
local built = redis.call('HGET', current, 'ready') == '1'
if built and not months[ARGV[5]] then purge(current, holds_prefix .. ARGV[5], hold_prefix, now) end
for i = 1, #KEYS do
  reply[#reply + 1] = states[i]
  if built then
    for _, v in ipairs(status(current, ARGV[6 + i])) do reply[#reply + 1] = v end
  else
    for _ = 1, 5 do reply[#reply + 1] = '-' end
  end
end
for _, m in ipairs(applied) do reply[#reply + 1] = m end
return words(reply)
"""
)

# KEYS: hold. ARGV: quota_prefix, holds_prefix.
RELEASE = """
local hold = KEYS[1]
if redis.call('HGET', hold, 'state') ~= 'open' then return 0 end
local month, meter = redis.call('HGET', hold, 'month'), redis.call('HGET', hold, 'meter')
local qty = tonumber(redis.call('HGET', hold, 'quantity'))
redis.call('HINCRBYFLOAT', ARGV[1] .. month, 'reserved:' .. meter, -qty)
redis.call('ZREM', ARGV[2] .. month, string.match(hold, '[^:]+$'))
redis.call('HSET', hold, 'state', 'released')
return 1
"""

# KEYS: quota, holds. ARGV: hold_prefix, meter.
STATUS = (
    _COMMON
    + """
if redis.call('HGET', KEYS[1], 'ready') ~= '1' then return 'rebuild' end
purge(KEYS[1], KEYS[2], ARGV[1], now_ms())
local s = status(KEYS[1], ARGV[2])
return words({'ok', s[1], s[2], s[3], s[4], s[5]})
"""
)

# ARGV: quota_prefix, applied_prefix, batch, then deltas. Returns the months it counted (a month
# whose quota is not built yet is left for after the rebuild, which counts it from Postgres).
APPLY = (
    _COMMON
    + """
return apply(ARGV[1], ARGV[2], ARGV[3], 4)
"""
)

# KEYS: quota, holds. ARGV: hold_prefix, applied_prefix, month, expire_seconds, tier, meter
# count, then (meter, used, limit, hard) per meter, then the ids of the batches already in `used`.
REBUILD = """
local quota, holds = KEYS[1], KEYS[2]
if redis.call('HGET', quota, 'ready') == '1' then return 0 end
redis.call('DEL', quota)
redis.call('HSET', quota, 'tier', ARGV[5])
local count = tonumber(ARGV[6])
for i = 0, count - 1 do
  local base = 7 + i * 4
  local meter = ARGV[base]
  redis.call('HSET', quota, 'used:' .. meter, ARGV[base + 1], 'limit:' .. meter, ARGV[base + 2],
             'hard:' .. meter, ARGV[base + 3], 'reserved:' .. meter, '0')
end
for i = 7 + count * 4, #ARGV do
  redis.call('SET', ARGV[2] .. ARGV[3] .. ':' .. ARGV[i], '1', 'EX', 86400)
end
-- Holds still open (Redis kept them while the quota hash went) count as reserved again.
for _, id in ipairs(redis.call('ZRANGE', holds, 0, -1)) do
  local hold = ARGV[1] .. id
  if redis.call('HGET', hold, 'state') == 'open' then
    redis.call('HINCRBYFLOAT', quota, 'reserved:' .. redis.call('HGET', hold, 'meter'),
               tonumber(redis.call('HGET', hold, 'quantity')))
  end
end
redis.call('HSET', quota, 'ready', '1')
redis.call('EXPIRE', quota, tonumber(ARGV[4]))
return 1
"""
