-- srs-proxy routing state. One script, one operation per call, so every
-- operation is atomic and takes one round trip. The data model is described
-- in redis.rs.
--
-- Every key the script touches is declared in KEYS (all share one hash tag,
-- so one Redis Cluster slot), which keeps scripts correct while that slot
-- migrates between cluster nodes:
--
-- KEYS[1]  origins        zset   origin id -> expiry (ms, server clock; inf = static)
-- KEYS[2]  registrations  hash   origin id -> Origin JSON
-- KEYS[3]  policy         hash   origin id -> "<weight> <max streams> <protocol>,<protocol>..."
-- KEYS[4]  load           hash   origin id -> streams mapped to it (kept exact by map/unmap)
-- KEYS[5]  mappings       hash   stream -> origin id
-- KEYS[6]  mapping-info   hash   stream -> "<since ms> <StreamKey JSON>"
-- KEYS[7]  expiry         zset   stream -> expiry (ms)
-- KEYS[8]  gone           zset   origin id -> when it was removed or expired
-- KEYS[9..14] room:<any|rtmp|http|api|srt|rtc>
--                         zset   origin id -> load (streams / weight), for live
--                                healthy origins with room that serve the protocol
-- KEYS[15] health         hash   origin id -> "<1|0 healthy> <since ms|-1> <failures> <successes> <last error>"
--                                (absent: healthy, never checked)
-- KEYS[16] probe-turns    hash   origin id -> "<until ms> <prober>": who probes it, until when
-- KEYS[17] (session operations only) the session's string key
-- ARGV[1]  operation
-- ARGV[2]  the pub/sub channel announcing removed and expired origins
-- ARGV[3..] the operation's arguments
--
-- Cost: nothing walks every stream. Expired mappings and origins are taken
-- from the expiry-ordered sets as they fall due; least-streams reads the
-- least loaded run of one room set by rank; random and consistent-hash read
-- the ids and weights of the origins with room and hash each (rendezvous
-- needs them all). Listing streams is an HSCAN page.
--
-- Time is the server's (TIME), so proxies with skewed clocks agree.

local origins, registrations, policy, load, mappings, info, expiry, gone =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local rooms = {[''] = KEYS[9], rtmp = KEYS[10], http = KEYS[11], api = KEYS[12], srt = KEYS[13], rtc = KEYS[14]}
local health, probe_turns, session = KEYS[15], KEYS[16], KEYS[17]
local op, gone_channel = ARGV[1], ARGV[2]

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- How long a removed or expired origin is remembered as gone (ms): longer
-- than any relay waits between refreshes.
local GONE_MS = 900000
-- Expired mappings a claim clears before placing a stream (the sweep
-- clears the rest), so one claim never does unbounded work.
local CLAIM_EXPIRE_BATCH = 100

local function ms(n)
  return string.format('%.0f', n)
end

-- A load as a score that reads back as the same double.
local function score_text(x)
  return string.format('%.17g', x)
end

local function alive(score)
  return score and (score == 'inf' or tonumber(score) > now)
end

-- Byte-wise a < b (Lua's own < follows the server's locale).
local function bytes_less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- An origin's health record (healthy and never checked when absent).
local function health_of(id)
  local v = redis.call('HGET', health, id)
  if not v then
    return {healthy = true, since = -1, failures = 0, successes = 0, err = ''}
  end
  local h, since, failures, successes, err = string.match(v, '^(%d) (%-?%d+) (%d+) (%d+) ?(.*)$')
  return {
    healthy = h == '1',
    since = tonumber(since),
    failures = tonumber(failures),
    successes = tonumber(successes),
    err = err,
  }
end

local function healthy(id)
  local v = redis.call('HGET', health, id)
  return not v or string.sub(v, 1, 1) == '1'
end

-- The registration JSON of an origin that may serve streams (live and
-- healthy), or nil.
local function live_origin(id)
  if alive(redis.call('ZSCORE', origins, id)) and healthy(id) then
    return redis.call('HGET', registrations, id) or nil
  end
  return nil
end

-- Weight, streams limit and served protocols of an origin's policy entry.
local function parse_policy(p)
  local w, m, protos = string.match(p, '^(%d+) (%d+) ?(.*)$')
  return tonumber(w), tonumber(m), protos
end

-- Files `id` in the room sets it belongs in now: none when it is gone,
-- expired or full.
local function file_room(id)
  local p = redis.call('HGET', policy, id)
  local w, m, protos, n
  local room = false
  if p and alive(redis.call('ZSCORE', origins, id)) and healthy(id) then
    w, m, protos = parse_policy(p)
    n = tonumber(redis.call('HGET', load, id) or '0')
    room = m == 0 or n < m
  end
  for proto, key in pairs(rooms) do
    if room and (proto == '' or string.find(',' .. protos .. ',', ',' .. proto .. ',', 1, true)) then
      redis.call('ZADD', key, score_text(n / w), id)
    else
      redis.call('ZREM', key, id)
    end
  end
end

local function add_load(id, delta)
  if redis.call('HINCRBY', load, id, delta) <= 0 then
    redis.call('HDEL', load, id)
  end
  file_room(id)
end

local function unmap(stream)
  local id = redis.call('HGET', mappings, stream)
  redis.call('HDEL', mappings, stream)
  redis.call('HDEL', info, stream)
  redis.call('ZREM', expiry, stream)
  if id then
    add_load(id, -1)
  end
end

local function map(stream, key_json, id, ttl)
  unmap(stream)
  redis.call('HSET', mappings, stream, id)
  redis.call('HSET', info, stream, ms(now) .. ' ' .. key_json)
  redis.call('ZADD', expiry, ms(now + ttl), stream)
  add_load(id, 1)
end

local function touch(stream, ttl)
  redis.call('ZADD', expiry, ms(now + ttl), stream)
end

-- The origin a live mapping points at, or nil (also for an expired one).
local function mapped(stream)
  local id = redis.call('HGET', mappings, stream)
  if id and alive(redis.call('ZSCORE', expiry, stream)) then
    return id
  end
  return nil
end

local function forget_origin(id)
  redis.call('ZREM', origins, id)
  redis.call('HDEL', registrations, id)
  redis.call('HDEL', policy, id)
  redis.call('HDEL', health, id)
  redis.call('HDEL', probe_turns, id)
  file_room(id)
  redis.call('ZADD', gone, ms(now), id)
  redis.call('PEXPIRE', gone, GONE_MS)
  redis.call('PUBLISH', gone_channel, id)
end

-- Applies a failure (`at_once`: a failed connect; else a probe) or a
-- success to a registered origin's health. Returns 1 when it became
-- unhealthy (announced like a removal, so relays end), 2 when healthy
-- again, 0 otherwise.
local function change_health(id, ok, err, at_once, failures_to_fail, successes_to_heal)
  if redis.call('HEXISTS', registrations, id) == 0 then
    return 0
  end
  local h = health_of(id)
  local changed = 0
  if ok then
    h.failures = 0
    h.successes = h.successes + 1
    if not h.healthy and h.successes >= successes_to_heal then
      h.healthy, h.since, h.successes, changed = true, now, 0, 2
    end
  else
    h.err = string.gsub(err, '[\r\n]', ' ')
    h.successes = 0
    h.failures = h.failures + 1
    if h.healthy and (at_once or h.failures >= failures_to_fail) then
      h.healthy, h.since, changed = false, now, 1
    end
  end
  local flag = '0'
  if h.healthy then
    flag = '1'
  end
  redis.call('HSET', health, id, flag .. ' ' .. ms(h.since) .. ' ' .. h.failures .. ' ' .. h.successes .. ' ' .. h.err)
  if changed ~= 0 then
    file_room(id)
  end
  if changed == 1 then
    redis.call('PUBLISH', gone_channel, id)
  end
  return changed
end

-- Clears what fell due: every expired origin (announced) and up to `batch`
-- expired mappings. Returns the expired origins and the mappings cleared.
local function expire(batch)
  local expired = redis.call('ZRANGEBYSCORE', origins, '-inf', ms(now))
  for _, id in ipairs(expired) do
    forget_origin(id)
  end
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', ms(now), 'LIMIT', 0, batch)
  for _, stream in ipairs(due) do
    unmap(stream)
  end
  return expired, #due
end

-- Policies: the same functions as balance.rs, from the same inputs.

-- u in (0, 1) from the first 52 bits of SHA-1(text \n id), as balance::draw.
local function draw(text, id)
  local bits = tonumber(string.sub(redis.sha1hex(text .. '\n' .. id), 1, 13), 16)
  return (bits + 0.5) / 4503599627370496
end

-- balance::tie_index: the salt's low 32 bits modulo the number of ties.
local function tie_index(salt, ties)
  return tonumber(string.sub(salt, 9, 16), 16) % ties
end

-- Weighted rendezvous over {id, weight} (balance::rendezvous): the highest
-- -weight / ln(draw) wins, the byte-wise smaller id on an exact tie.
local function rendezvous(text, cands)
  local best, best_score
  for _, c in ipairs(cands) do
    local score = -math.max(1, c.weight) / math.log(draw(text, c.id))
    if best == nil or score > best_score or (score == best_score and bytes_less(c.id, best.id)) then
      best, best_score = c, score
    end
  end
  return best and best.id
end

-- The origin a new stream goes to, read from the room set of `proto`.
local function choose(policy_name, stream, salt, proto)
  local room = rooms[proto or '']
  if room == nil then
    return nil
  end
  if policy_name == 'least-streams' then
    -- The set is ordered by load, then id (byte-wise): the least loaded
    -- run is at the front, and its k-th member is one rank lookup away.
    local first = redis.call('ZRANGE', room, 0, 0, 'WITHSCORES')
    if #first == 0 then
      return nil
    end
    local k = tie_index(salt, redis.call('ZCOUNT', room, first[2], first[2]))
    if k == 0 then
      return first[1]
    end
    return redis.call('ZRANGE', room, k, k)[1]
  end
  local ids = redis.call('ZRANGE', room, 0, -1)
  local cands = {}
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    local policies = redis.call('HMGET', policy, unpack(chunk))
    for j, id in ipairs(chunk) do
      cands[#cands + 1] = {id = id, weight = parse_policy(policies[j] or '1 0')}
    end
  end
  if policy_name == 'random' then
    return rendezvous(salt, cands)
  end
  return rendezvous(stream, cands)
end

if op == 'claim' then
  -- stream, key JSON, ttl ms, policy, salt, protocol -> {outcome, origin JSON} | {'none'}
  local stream, key_json, ttl, policy_name, salt, proto =
    ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
  local outcome = 'new'
  local current = mapped(stream)
  if current then
    local reg = live_origin(current)
    if reg then
      touch(stream, ttl)
      return {'hit', reg}
    end
    outcome = 'failover'
  end
  unmap(stream)
  expire(CLAIM_EXPIRE_BATCH)
  local id = choose(policy_name, stream, salt, proto)
  if id == nil then
    return {'none'}
  end
  map(stream, key_json, id, ttl)
  return {outcome, redis.call('HGET', registrations, id)}
elseif op == 'lookup' then
  -- stream -> origin JSON | nil
  local current = mapped(ARGV[3])
  return current and live_origin(current)
elseif op == 'refresh' then
  -- stream, key JSON, origin id, ttl ms -> 1 | 0
  local stream, key_json, id, ttl = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
  local score = redis.call('ZSCORE', origins, id)
  if score == false then
    if redis.call('ZSCORE', gone, id) then
      return 0
    end
    -- Neither registered nor gone: this Redis lost its data (restarted
    -- empty, flushed, failed over to an empty replica). The relay goes on;
    -- the mapping returns once the origin registers again.
    return 1
  elseif not alive(score) or not healthy(id) then
    return 0
  end
  local current = mapped(stream)
  if current == id then
    touch(stream, ttl)
    return 1
  elseif not current then
    -- Expired while the relay ran, and nobody else took it: take it back.
    map(stream, key_json, id, ttl)
    return 1
  end
  return 0
elseif op == 'release' then
  -- stream, origin id -> 1 | 0
  local stream, id = ARGV[3], ARGV[4]
  if redis.call('HGET', mappings, stream) == id then
    unmap(stream)
    return 1
  end
  return 0
elseif op == 'upsert_origin' then
  -- id, Origin JSON, ttl ms ('' = static), policy entry -> 1
  local id, reg, ttl, pol = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local score = 'inf'
  if ttl ~= '' then
    score = ms(now + tonumber(ttl))
  end
  redis.call('HSET', registrations, id, reg)
  redis.call('HSET', policy, id, pol)
  redis.call('ZADD', origins, score, id)
  redis.call('ZREM', gone, id)
  file_room(id)
  return 1
elseif op == 'remove_origin' then
  -- id -> 1 | 0
  local id = ARGV[3]
  if redis.call('HEXISTS', registrations, id) == 1 then
    forget_origin(id)
    return 1
  end
  return 0
elseif op == 'origin' then
  -- id -> origin JSON | nil
  return live_origin(ARGV[3])
elseif op == 'registration' then
  -- id -> origin JSON | nil, healthy or not
  if alive(redis.call('ZSCORE', origins, ARGV[3])) then
    return redis.call('HGET', registrations, ARGV[3]) or nil
  end
  return nil
elseif op == 'list_origins' then
  -- -> {origin JSON, streams, ms until expiry (-1 = static), healthy (1|0),
  --     since (ms, -1 = never changed), last error, ...}
  expire(CLAIM_EXPIRE_BATCH)
  local out = {}
  local live = redis.call('ZRANGEBYSCORE', origins, '(' .. ms(now), '+inf', 'WITHSCORES')
  for i = 1, #live, 2 do
    local id, score = live[i], live[i + 1]
    local reg = redis.call('HGET', registrations, id)
    if reg then
      out[#out + 1] = reg
      out[#out + 1] = tonumber(redis.call('HGET', load, id) or '0')
      if score == 'inf' then
        out[#out + 1] = -1
      else
        out[#out + 1] = tonumber(score) - now
      end
      local h = health_of(id)
      if h.healthy then
        out[#out + 1] = 1
      else
        out[#out + 1] = 0
      end
      out[#out + 1] = h.since
      out[#out + 1] = h.err
    end
  end
  return out
elseif op == 'list_streams' then
  -- cursor, count -> {next cursor, key JSON, origin id, ms since claimed, ms until expiry, ...}
  local page = redis.call('HSCAN', mappings, ARGV[3], 'COUNT', ARGV[4])
  local out = {page[1]}
  local kv = page[2]
  for i = 1, #kv, 2 do
    local stream, id = kv[i], kv[i + 1]
    local expires = redis.call('ZSCORE', expiry, stream)
    local since, key_json = string.match(redis.call('HGET', info, stream) or '', '^(%d+) (.*)$')
    if alive(expires) and since then
      out[#out + 1] = key_json
      out[#out + 1] = id
      out[#out + 1] = now - tonumber(since)
      out[#out + 1] = tonumber(expires) - now
    end
  end
  return out
elseif op == 'put_session' then
  -- Session JSON, ttl ms -> 1
  redis.call('SET', session, ARGV[3], 'PX', ARGV[4])
  return 1
elseif op == 'touch_session' then
  -- ttl ms -> Session JSON | nil
  local v = redis.call('GET', session)
  if v then
    redis.call('PEXPIRE', session, ARGV[3])
  end
  return v
elseif op == 'remove_session' then
  -- -> 1 | 0
  return redis.call('DEL', session)
elseif op == 'report_failure' then
  -- id, reason -> 1 (became unhealthy) | 0
  return change_health(ARGV[3], false, ARGV[4], true, 1, 1)
elseif op == 'record_probe' then
  -- id, '1' (answered) | '0', reason, failures to fail, successes to heal -> 0 | 1 | 2
  return change_health(ARGV[3], ARGV[4] == '1', ARGV[5], false, tonumber(ARGV[6]), tonumber(ARGV[7]))
elseif op == 'probe_turns' then
  -- hold ms, prober, ids... -> the ids this prober probes now
  local hold, prober, mine = tonumber(ARGV[3]), ARGV[4], {}
  for i = 5, #ARGV do
    local id = ARGV[i]
    local free = true
    local turn = redis.call('HGET', probe_turns, id)
    if turn then
      local until_ms, holder = string.match(turn, '^(%-?%d+) (.*)$')
      free = holder == prober or tonumber(until_ms) <= now
    end
    if free and redis.call('HEXISTS', registrations, id) == 1 then
      redis.call('HSET', probe_turns, id, ms(now + hold) .. ' ' .. prober)
      mine[#mine + 1] = id
    end
  end
  return mine
elseif op == 'sweep' then
  -- batch -> {mappings cleared, ids of origins that expired...}
  local expired, cleared = expire(tonumber(ARGV[3]))
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', ms(now - GONE_MS))
  local out = {cleared}
  for _, id in ipairs(expired) do
    out[#out + 1] = id
  end
  return out
elseif op == 'pick' then
  -- policy, stream, salt, then {id, weight, max_streams, streams}... -> id | nil
  -- balance::pick on given candidates, touching no key: lets tests hold
  -- this script's functions to balance.rs.
  local policy_name, stream, salt = ARGV[3], ARGV[4], ARGV[5]
  local cands = {}
  for i = 6, #ARGV, 4 do
    local w, m, n = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    if m == 0 or n < m then
      cands[#cands + 1] = {id = ARGV[i], weight = w, load = n / math.max(1, w)}
    end
  end
  if #cands == 0 then
    return nil
  elseif policy_name == 'random' then
    return rendezvous(salt, cands)
  elseif policy_name == 'consistent-hash' then
    return rendezvous(stream, cands)
  end
  local least = cands[1].load
  for _, c in ipairs(cands) do
    least = math.min(least, c.load)
  end
  local ties = {}
  for _, c in ipairs(cands) do
    if c.load == least then
      ties[#ties + 1] = c.id
    end
  end
  table.sort(ties, bytes_less)
  return ties[tie_index(salt, #ties) + 1]
end
return redis.error_reply('unknown operation ' .. tostring(op))
