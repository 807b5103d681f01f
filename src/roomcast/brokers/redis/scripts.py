"""Lua scripts run atomically by the Redis broker and presence store.

Every script touches only keys of one room, which share a hash tag
(``{room}``), so each also runs on Redis Cluster.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "PRESENCE_ADD",
    "PRESENCE_REAP",
    "PRESENCE_REMOVE",
    "PRESENCE_STATUS",
    "PUBLISH",
    "READ_AFTER",
    "READ_PAGE",
    "REAPER_RELEASE",
    "REAPER_TURN",
    "REWIND",
]

PUBLISH: Final = """
-- KEYS: meta (hash: epoch, offset, bytes), stream (history), ids (hash: message id -> offset)
-- ARGV: channel, payload (JSON object without offset), message id,
--       history size, history ttl (s, 0 = none), epoch to use if the history is new,
--       history bytes (0 = no bound; the newest entry stays whatever its size),
--       the client's retry key ("<sender>\0<ref>", '' = none),
--       the command that publishes (PUBLISH, or SPUBLISH on Redis Cluster)
-- Returns {offset, epoch, 1 if the id was already stored (nothing done) else 0,
--          entries evicted for the byte bound, the id stored first (retry key only)}.
-- Idempotent: a retry of a publication whose reply was lost stores and publishes
-- nothing again while its id is retained, and returns the offset it got. So is a
-- client's retry of a message (the same retry key while the first is retained):
-- the first one's id and offset are returned. The ids hash maps "r:<retry key>"
-- to the id; the stream entry carries the key ('k') so trimming forgets it.
local retry = ARGV[8] or ''
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and redis.call('HEXISTS', KEYS[1], 'offset') == 1 then
  local stored = redis.call('HGET', KEYS[3], ARGV[3])
  if stored then
    return {tonumber(stored), epoch, 1, 0}
  end
  if retry ~= '' then
    local first = redis.call('HGET', KEYS[3], 'r:' .. retry)
    if first then
      local at = redis.call('HGET', KEYS[3], first)
      if at then
        return {tonumber(at), epoch, 1, 0, first}
      end
    end
  end
else
  -- A new history: none yet, or only its epoch (set by a reader). A stream left
  -- from an earlier history whose meta was lost alone (evicted) goes too, else
  -- XADD would refuse the smaller entry id and every publication would fail.
  epoch = epoch or ARGV[6]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'bytes', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local payload = string.sub(ARGV[2], 1, -2) .. ',"offset":' .. offset .. '}'
if retry ~= '' then
  redis.call('XADD', KEYS[2], offset .. '-0', 'i', ARGV[3], 'p', payload, 'k', retry)
  redis.call('HSET', KEYS[3], ARGV[3], offset, 'r:' .. retry, ARGV[3])
else
  redis.call('XADD', KEYS[2], offset .. '-0', 'i', ARGV[3], 'p', payload)
  redis.call('HSET', KEYS[3], ARGV[3], offset)
end
local size = redis.call('HINCRBY', KEYS[1], 'bytes', #payload)
-- Keep history size entries; the ids and sizes of the ones dropped go with them.
local oldest = offset - tonumber(ARGV[4])
if oldest >= 1 then
  local gone = redis.call('XRANGE', KEYS[2], '-', oldest .. '-0')
  for _, entry in ipairs(gone) do
    redis.call('HDEL', KEYS[3], entry[2][2])
    if entry[2][6] then
      redis.call('HDEL', KEYS[3], 'r:' .. entry[2][6])
    end
    size = size - #entry[2][4]
  end
  if #gone > 0 then
    redis.call('XTRIM', KEYS[2], 'MINID', (oldest + 1) .. '-0')
  end
end
-- Keep at most history bytes: the oldest entries go first, the newest stays.
local limit = tonumber(ARGV[7] or '0')
local evicted = 0
while limit > 0 and size > limit do
  local batch = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 16)
  local last = nil
  for _, entry in ipairs(batch) do
    if size <= limit or entry[1] == offset .. '-0' then
      break
    end
    redis.call('HDEL', KEYS[3], entry[2][2])
    if entry[2][6] then
      redis.call('HDEL', KEYS[3], 'r:' .. entry[2][6])
    end
    size = size - #entry[2][4]
    last = entry[1]
    evicted = evicted + 1
  end
  if last == nil then
    break
  end
  redis.call('XTRIM', KEYS[2], 'MINID', (tonumber(string.match(last, '^%d+')) + 1) .. '-0')
end
if size < 0 then
  size = 0  -- entries stored before sizes were counted
end
redis.call('HSET', KEYS[1], 'bytes', size)
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
end
-- Subscribers get the epoch in front of the payload: "<epoch> <payload>".
redis.call(ARGV[9] or 'PUBLISH', ARGV[1], epoch .. ' ' .. payload)
return {offset, epoch, 0, evicted}
"""

READ_PAGE: Final = """
-- KEYS: meta, stream, ids
-- ARGV: since id ('' = none), limit (-1 = none), epoch to create if none (''
--       when history is off), meta ttl (s, 0 = none), channel and token of an
--       ordering barrier ('' = none), the command that publishes it (PUBLISH,
--       or SPUBLISH on the room's own channel on Redis Cluster)
-- Returns {epoch or false, newest offset, 1 if since was found else 0, entries},
-- entries oldest first: after since (at most limit), or the newest limit ones.
-- Costs O(limit), not O(history): the id is found through KEYS[3].
if ARGV[3] ~= '' then
  redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3])
  if tonumber(ARGV[4]) > 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[4], 'NX')
  end
end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
local newest = tonumber(meta[2] or '0')
local limit = tonumber(ARGV[2])
local found = 0
local entries = {}
if meta[2] then
  if ARGV[1] ~= '' then
    local at = redis.call('HGET', KEYS[3], ARGV[1])
    if at and limit ~= 0 then
      if limit > 0 then
        entries = redis.call('XRANGE', KEYS[2], '(' .. at .. '-0', '+', 'COUNT', limit)
      else
        entries = redis.call('XRANGE', KEYS[2], '(' .. at .. '-0', '+')
      end
    end
    -- Found only if the history really continues right after it (no hole).
    if at then
      local next_id = (tonumber(at) + 1) .. '-0'
      if (#entries > 0 and entries[1][1] == next_id) or (#entries == 0 and
          (tonumber(at) == newest or #redis.call('XRANGE', KEYS[2], next_id, next_id) > 0)) then
        found = 1
      else
        entries = {}
      end
    end
  elseif limit ~= 0 then
    if limit > 0 then
      entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
    else
      entries = redis.call('XREVRANGE', KEYS[2], '+', '-')
    end
    local n = #entries
    for i = 1, math.floor(n / 2) do
      entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
    end
  end
end
if ARGV[5] ~= '' then
  redis.call(ARGV[7] or 'PUBLISH', ARGV[5], ARGV[6])
end
return {meta[1], newest, found, entries}
"""

READ_AFTER: Final = """
-- KEYS: meta, stream. ARGV: offset, most entries to return.
-- Returns {epoch or false, newest offset, entries after the offset (oldest first)}.
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[2] then
  return {meta[1], 0, {}}
end
local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
return {meta[1], tonumber(meta[2]), entries}
"""

REWIND: Final = """
-- KEYS: meta. ARGV: the epoch a pod saw rewound, a new epoch.
-- A failover lost the room's last writes (its counter, in that epoch, is behind
-- what was delivered): move the history to the new epoch, once, whoever asks
-- first. Returns the epoch now (false if the history is gone).
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
  return ARGV[2]
end
return epoch
"""

PRESENCE_ADD: Final = """
-- KEYS: conns (zset conn -> expiry ms), owner (hash conn -> user),
--       users (hash user -> connection count), status (hash), info (hash)
-- ARGV: expiry ms, key ttl (s), then triples conn, user, info JSON ('' = none)
-- Adds (or refreshes) each connection; returns {users in the room before, users
-- that came online...}.
local online = {redis.call('HLEN', KEYS[3])}
for i = 3, #ARGV, 3 do
  local conn, user, info = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZADD', KEYS[1], ARGV[1], conn) == 1 then
    redis.call('HSET', KEYS[2], conn, user)
    if redis.call('HINCRBY', KEYS[3], user, 1) == 1 then
      table.insert(online, user)
    end
  end
  if info ~= '' then
    redis.call('HSET', KEYS[5], user, info)
  end
end
for k = 1, 5 do
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return online
"""

_FORGET = """
local function forget(conn)
  if redis.call('ZREM', KEYS[1], conn) == 0 then
    return nil
  end
  local user = redis.call('HGET', KEYS[2], conn)
  redis.call('HDEL', KEYS[2], conn)
  if not user then
    return nil
  end
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HDEL', KEYS[3], user)
    redis.call('HDEL', KEYS[4], user)
    redis.call('HDEL', KEYS[5], user)
    return user
  end
  return nil
end
"""

PRESENCE_REMOVE: Final = (
    _FORGET
    + """
-- KEYS: as PRESENCE_ADD. ARGV: conn. Returns 1 if its user went offline, 3 if the
-- room is empty now too, else 0.
if forget(ARGV[1]) then
  if redis.call('HLEN', KEYS[3]) == 0 then
    return 3
  end
  return 1
end
return 0
"""
)

PRESENCE_REAP: Final = (
    _FORGET
    + """
-- KEYS: as PRESENCE_ADD. ARGV: now (ms).
-- Forgets connections whose pod stopped refreshing them; returns the users gone
-- offline, then 1 if that left the room empty (else 0).
local gone = {}
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, conn in ipairs(dead) do
  local user = forget(conn)
  if user then
    table.insert(gone, user)
  end
end
if #gone > 0 and redis.call('HLEN', KEYS[3]) == 0 then
  table.insert(gone, 1)
else
  table.insert(gone, 0)
end
return gone
"""
)

PRESENCE_STATUS: Final = """
-- KEYS: users (hash), status (hash). ARGV: user, status. Returns 1 if it changed.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local old = redis.call('HGET', KEYS[2], ARGV[1]) or 'online'
if old == ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

REAPER_TURN: Final = """
-- KEYS: the reaper key (string: the pod whose turn it is). ARGV: pod id, ms to hold it.
-- Returns 1 if it is this pod's turn to reap (taken now, or kept), else 0.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

REAPER_RELEASE: Final = """
-- KEYS: the reaper key. ARGV: pod id. Gives the turn up if this pod holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
