-- srs-proxy routing state. One script, one operation per call, so every
-- operation is atomic and takes one round trip. The data model is described
-- in redis.rs.
--
-- KEYS[1]  origins        zset   origin id -> expiry (ms, server clock; inf = static)
-- KEYS[2]  registrations  hash   origin id -> Origin JSON
-- KEYS[3]  streams        zset   stream -> expiry (ms): lists and trims mappings
-- ARGV[1]  operation
-- ARGV[2]  namespace of the keys built here (all share KEYS' hash tag):
--            <ns>stream:<stream>          hash {origin, since, key}, PEXPIRE'd
--            <ns>origin-streams:<id>      zset stream -> expiry: the origin's load
--            <ns>session:<kind>:<id>      string (Session JSON), PEXPIRE'd
--            <ns>gone                     zset origin id -> when it was removed/expired
--            <ns>origin-gone              pub/sub channel of removed/expired ids
-- ARGV[3..] the operation's arguments
--
-- Time is the server's (TIME), so proxies with skewed clocks agree.

local origins, registrations, streams = KEYS[1], KEYS[2], KEYS[3]
local op, ns = ARGV[1], ARGV[2]

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function ms(n)
  return string.format('%.0f', n)
end

local function stream_key(stream)
  return ns .. 'stream:' .. stream
end

local function load_key(id)
  return ns .. 'origin-streams:' .. id
end

local function session_key(kind, id)
  return ns .. 'session:' .. kind .. ':' .. id
end

local gone_channel = ns .. 'origin-gone'
local gone = ns .. 'gone'
-- How long a removed or expired origin is remembered as gone (ms): longer
-- than any relay waits between refreshes.
local GONE_MS = 900000

local function alive(score)
  return score and (score == 'inf' or tonumber(score) > now)
end

-- The registration JSON of a live origin, or nil.
local function live_origin(id)
  if alive(redis.call('ZSCORE', origins, id)) then
    return redis.call('HGET', registrations, id) or nil
  end
  return nil
end

-- Adds or re-scores a member of an expiry-scored set; the set itself
-- expires with its longest-lived member, so an idle store empties itself.
local function track(set, member, ttl)
  redis.call('ZADD', set, ms(now + ttl), member)
  if redis.call('PTTL', set) < ttl then
    redis.call('PEXPIRE', set, ttl)
  end
end

-- Streams an origin holds now (expired ones dropped first).
local function load(id)
  local set = load_key(id)
  redis.call('ZREMRANGEBYSCORE', set, '-inf', ms(now))
  return redis.call('ZCARD', set)
end

local function map(stream, key_json, id, ttl)
  local k = stream_key(stream)
  redis.call('HSET', k, 'origin', id, 'since', ms(now), 'key', key_json)
  redis.call('PEXPIRE', k, ttl)
  track(streams, stream, ttl)
  track(load_key(id), stream, ttl)
end

local function touch(stream, id, ttl)
  redis.call('PEXPIRE', stream_key(stream), ttl)
  track(streams, stream, ttl)
  track(load_key(id), stream, ttl)
end

local function unmap(stream, id)
  redis.call('DEL', stream_key(stream))
  redis.call('ZREM', streams, stream)
  redis.call('ZREM', load_key(id), stream)
end

local function forget_origin(id)
  redis.call('ZREM', origins, id)
  redis.call('HDEL', registrations, id)
  redis.call('DEL', load_key(id))
  redis.call('ZADD', gone, ms(now), id)
  redis.call('PEXPIRE', gone, GONE_MS)
  redis.call('PUBLISH', gone_channel, id)
end

-- Policies: the same functions as balance.rs, from the same inputs.

-- u in (0, 1) from the first 52 bits of SHA-1(text \n id), as balance::draw.
local function draw(text, id)
  local bits = tonumber(string.sub(redis.sha1hex(text .. '\n' .. id), 1, 13), 16)
  return (bits + 0.5) / 4503599627370496
end

-- Weighted rendezvous, as balance::race. Exact score ties (which need equal
-- 52-bit draws) fall to the first candidate here and to the smaller id there.
local function race(text, cands, weighted)
  local best, best_score
  for _, c in ipairs(cands) do
    local w = 1
    if weighted then
      w = c.weight
    end
    local score = -w / math.log(draw(text, c.id))
    if best == nil or score > best_score then
      best, best_score = c, score
    end
  end
  return best
end

-- cands: {id, weight (>= 1), streams}, every one with room.
local function choose(policy, stream, salt, cands)
  if #cands == 0 then
    return nil
  end
  if policy == 'random' then
    return race(salt, cands, true)
  elseif policy == 'consistent-hash' then
    return race(stream, cands, true)
  end
  local best = cands[1]
  for i = 2, #cands do
    local c = cands[i]
    if c.streams * best.weight < best.streams * c.weight then
      best = c
    end
  end
  local ties = {}
  for _, c in ipairs(cands) do
    if c.streams * best.weight == best.streams * c.weight then
      ties[#ties + 1] = c
    end
  end
  return race(salt, ties, false)
end

local function candidate(id, weight, max_streams, streams)
  if max_streams > 0 and streams >= max_streams then
    return nil
  end
  return {id = id, weight = math.max(1, weight), streams = streams}
end

-- Whether a decoded registration has a port for `proto` ('' = any);
-- WebRTC also needs the api port its signalling goes to (Origin::serves).
local function has_port(o, name)
  local port = type(o.ports) == 'table' and o.ports[name]
  return port ~= nil and port ~= false and port ~= cjson.null
end

local function serves(o, proto)
  if proto == nil or proto == '' then
    return true
  end
  if proto == 'rtc' and not has_port(o, 'api') then
    return false
  end
  return has_port(o, proto)
end

-- Live origins with room (serving `proto`), each with its registration.
local function candidates(proto)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', origins, '(' .. ms(now), '+inf')) do
    local reg = redis.call('HGET', registrations, id)
    local o = reg and cjson.decode(reg)
    if o and serves(o, proto) then
      local c = candidate(id, tonumber(o.weight) or 1, tonumber(o.max_streams) or 0, load(id))
      if c then
        c.reg = reg
        out[#out + 1] = c
      end
    end
  end
  return out
end

if op == 'claim' then
  -- stream, key JSON, ttl ms, policy, salt, protocol -> {outcome, origin JSON} | {'none'}
  local stream, key_json, ttl, policy, salt, proto = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
  local outcome = 'new'
  local current = redis.call('HGET', stream_key(stream), 'origin')
  if current then
    local reg = live_origin(current)
    if reg then
      touch(stream, current, ttl)
      return {'hit', reg}
    end
    outcome = 'failover'
    redis.call('ZREM', load_key(current), stream)
  end
  local c = choose(policy, stream, salt, candidates(proto))
  if c == nil then
    return {'none'}
  end
  map(stream, key_json, c.id, ttl)
  return {outcome, c.reg}
elseif op == 'lookup' then
  -- stream -> origin JSON | nil
  local current = redis.call('HGET', stream_key(ARGV[3]), 'origin')
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
  elseif not alive(score) then
    return 0
  end
  local current = redis.call('HGET', stream_key(stream), 'origin')
  if current == id then
    touch(stream, id, ttl)
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
  if redis.call('HGET', stream_key(stream), 'origin') == id then
    unmap(stream, id)
    return 1
  end
  return 0
elseif op == 'upsert_origin' then
  -- id, Origin JSON, ttl ms ('' = static) -> 1
  local id, reg, ttl = ARGV[3], ARGV[4], ARGV[5]
  local score = 'inf'
  if ttl ~= '' then
    score = ms(now + tonumber(ttl))
  end
  redis.call('HSET', registrations, id, reg)
  redis.call('ZADD', origins, score, id)
  redis.call('ZREM', gone, id)
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
elseif op == 'list_origins' then
  -- -> {origin JSON, streams, ms until expiry (-1 = static), ...}
  local out = {}
  local live = redis.call('ZRANGEBYSCORE', origins, '(' .. ms(now), '+inf', 'WITHSCORES')
  for i = 1, #live, 2 do
    local id, score = live[i], live[i + 1]
    local reg = redis.call('HGET', registrations, id)
    if reg then
      out[#out + 1] = reg
      out[#out + 1] = load(id)
      if score == 'inf' then
        out[#out + 1] = -1
      else
        out[#out + 1] = tonumber(score) - now
      end
    end
  end
  return out
elseif op == 'list_streams' then
  -- -> {key JSON, origin id, ms since claimed, ms until expiry, ...}
  local out = {}
  redis.call('ZREMRANGEBYSCORE', streams, '-inf', ms(now))
  for _, stream in ipairs(redis.call('ZRANGE', streams, 0, -1)) do
    local k = stream_key(stream)
    local v = redis.call('HMGET', k, 'key', 'origin', 'since')
    local pttl = redis.call('PTTL', k)
    if v[1] and v[2] and v[3] and pttl > 0 then
      out[#out + 1] = v[1]
      out[#out + 1] = v[2]
      out[#out + 1] = now - tonumber(v[3])
      out[#out + 1] = pttl
    end
  end
  return out
elseif op == 'put_session' then
  -- kind, id, Session JSON, ttl ms -> 1
  redis.call('SET', session_key(ARGV[3], ARGV[4]), ARGV[5], 'PX', ARGV[6])
  return 1
elseif op == 'touch_session' then
  -- kind, id, ttl ms -> Session JSON | nil
  local k = session_key(ARGV[3], ARGV[4])
  local v = redis.call('GET', k)
  if v then
    redis.call('PEXPIRE', k, ARGV[5])
  end
  return v
elseif op == 'remove_session' then
  -- kind, id -> 1 | 0
  return redis.call('DEL', session_key(ARGV[3], ARGV[4]))
elseif op == 'sweep' then
  -- -> ids of origins that expired (each announced on the gone channel)
  local expired = redis.call('ZRANGEBYSCORE', origins, '-inf', ms(now))
  for _, id in ipairs(expired) do
    forget_origin(id)
  end
  redis.call('ZREMRANGEBYSCORE', streams, '-inf', ms(now))
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', ms(now - GONE_MS))
  for _, id in ipairs(redis.call('ZRANGE', origins, 0, -1)) do
    load(id)
  end
  return expired
elseif op == 'pick' then
  -- policy, stream, salt, then {id, weight, max_streams, streams}... -> id | nil
  -- The policy alone on given candidates, touching no key: lets tests hold
  -- this script to balance.rs.
  local cands = {}
  for i = 6, #ARGV, 4 do
    local c = candidate(ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))
    if c then
      cands[#cands + 1] = c
    end
  end
  local c = choose(ARGV[3], ARGV[4], ARGV[5], cands)
  return c and c.id
end
return redis.error_reply('unknown operation ' .. tostring(op))
