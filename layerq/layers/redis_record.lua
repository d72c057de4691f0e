-- Included where a script says "-- @include record" (see redis_keys.load_scripts).
--
-- fixed_fields(payload, channel): a job record's fields that never change (id,
-- channel, type, enqueued_at, max_attempts) as a flat list of field/value pairs
-- for HSET, read from the job's stored msgpack ``payload``; {} when it is not a
-- job's message (or cannot be read). ``channel`` is where the message is
-- stored; a message for a process-local channel names its own. This is
-- redis_codec.fixed_record_pairs in Lua: while a job waits its record is read
-- from its payload, so the script that ends the job (and deletes the payload)
-- writes these into the record. Read here, they cost the worker nothing (sent
-- with every ack, they were the largest part of a drained job's cost there).
--
-- Most payloads are read by cmsgpack (in C). It cannot read msgpack's bin type
-- (bytes, which Channels messages may hold): those are walked here instead,
-- reading only the few values wanted and skipping the rest by their lengths.

local byte, sub = string.byte, string.sub

-- A big-endian unsigned integer of ``size`` bytes at ``at``.
local function uint(s, at, size)
  local value = 0
  for i = at, at + size - 1 do
    value = value * 256 + byte(s, i)
  end
  return value
end

-- Types of a fixed size: the whole value's size, tag byte included.
local FIXED = {
  [0xc0] = 1, [0xc2] = 1, [0xc3] = 1,                          -- nil, false, true
  [0xca] = 5, [0xcb] = 9,                                      -- float 32, 64
  [0xcc] = 2, [0xcd] = 3, [0xce] = 5, [0xcf] = 9,              -- uint 8 to 64
  [0xd0] = 2, [0xd1] = 3, [0xd2] = 5, [0xd3] = 9,              -- int 8 to 64
  [0xd4] = 3, [0xd5] = 4, [0xd6] = 6, [0xd7] = 10, [0xd8] = 18, -- fixext
}
-- Types with a length: {bytes of the length, bytes between it and the data}.
local SIZED = {
  [0xc4] = {1, 0}, [0xc5] = {2, 0}, [0xc6] = {4, 0},           -- bin 8, 16, 32
  [0xc7] = {1, 1}, [0xc8] = {2, 1}, [0xc9] = {4, 1},           -- ext 8, 16, 32
  [0xd9] = {1, 0}, [0xda] = {2, 0}, [0xdb] = {4, 0},           -- str 8, 16, 32
}
-- Containers: {bytes of the count, values per entry}.
local COUNTED = {
  [0xdc] = {2, 1}, [0xdd] = {4, 1},                            -- array 16, 32
  [0xde] = {2, 2}, [0xdf] = {4, 2},                            -- map 16, 32
}

-- The position after ``count`` values starting at ``at`` (containers whole).
local function skip(s, at, count)
  while count > 0 do
    count = count - 1
    local tag = byte(s, at)
    if tag == nil then
      error('truncated')
    elseif tag <= 0x7f or tag >= 0xe0 then
      at = at + 1
    elseif tag <= 0x8f then
      count = count + 2 * (tag - 0x80)
      at = at + 1
    elseif tag <= 0x9f then
      count = count + (tag - 0x90)
      at = at + 1
    elseif tag <= 0xbf then
      at = at + 1 + (tag - 0xa0)
    elseif FIXED[tag] then
      at = at + FIXED[tag]
    elseif SIZED[tag] then
      local size, gap = SIZED[tag][1], SIZED[tag][2]
      at = at + 1 + size + gap + uint(s, at + 1, size)
    elseif COUNTED[tag] then
      local size, per = COUNTED[tag][1], COUNTED[tag][2]
      count = count + per * uint(s, at + 1, size)
      at = at + 1 + size
    else
      error('bad msgpack tag')
    end
  end
  return at
end

-- A map's entry count and the position of its first key; nil if not a map.
local function map_at(s, at)
  local tag = byte(s, at)
  if tag and tag >= 0x80 and tag <= 0x8f then
    return tag - 0x80, at + 1
  elseif tag == 0xde or tag == 0xdf then
    local size = COUNTED[tag][1]
    return uint(s, at + 1, size), at + 1 + size
  end
  return nil, at
end

-- A string value and the position after it; nil (and that position) if not one.
local function str_at(s, at)
  local tag = byte(s, at)
  local length, head
  if tag and tag >= 0xa0 and tag <= 0xbf then
    length, head = tag - 0xa0, 1
  elseif tag == 0xd9 or tag == 0xda or tag == 0xdb then
    local size = SIZED[tag][1]
    length, head = uint(s, at + 1, size), 1 + size
  else
    return nil, skip(s, at, 1)
  end
  return sub(s, at + head, at + head + length - 1), at + head + length
end

-- A number, whether it is an integer, and the position after it; nil if not one.
local function number_at(s, at)
  local tag = byte(s, at)
  if tag <= 0x7f then
    return tag, true, at + 1
  elseif tag >= 0xe0 then
    return tag - 256, true, at + 1
  elseif tag == 0xcb then
    return (struct.unpack('>d', s, at + 1)), false, at + 9
  elseif tag == 0xca then
    return (struct.unpack('>f', s, at + 1)), false, at + 5
  elseif tag >= 0xcc and tag <= 0xcf then
    local size = FIXED[tag] - 1
    return uint(s, at + 1, size), true, at + 1 + size
  elseif tag >= 0xd0 and tag <= 0xd3 then
    local size = FIXED[tag] - 1
    local value = uint(s, at + 1, size)
    if value >= 2 ^ (8 * size - 1) then
      value = value - 2 ^ (8 * size)
    end
    return value, true, at + 1 + size
  end
  return nil, false, skip(s, at, 1)
end

-- The top-level strings and the envelope's values that the record needs, walked.
local function walk_fields(s)
  local found, envelope = {}, nil
  local entries, at = map_at(s, 1)
  if not entries then
    return found, nil
  end
  for _ = 1, entries do
    local key
    key, at = str_at(s, at)
    if key == 'type' or key == '__asgi_channel__' then
      found[key], at = str_at(s, at)
    elseif key == 'layerq' then
      local inner
      inner, at = map_at(s, at)
      if inner then
        envelope = {}
        for _ = 1, inner do
          local name
          name, at = str_at(s, at)
          if name == 'id' then
            envelope.id, at = str_at(s, at)
          elseif name == 'enqueued' then
            envelope.enqueued, _, at = number_at(s, at)
          elseif name == 'max_attempts' then
            local value, integer
            value, integer, at = number_at(s, at)
            envelope.max_attempts = integer and value or nil
          else
            at = skip(s, at, 1)
          end
        end
      else
        envelope = nil
        at = skip(s, at, 1)
      end
    else
      at = skip(s, at, 1)
    end
  end
  return found, envelope
end

-- The same, from cmsgpack's decoding when it can read the payload.
local function read_fields(s)
  local ok, message = pcall(cmsgpack.unpack, s)
  if not ok then
    return walk_fields(s)
  end
  if type(message) ~= 'table' or type(message['layerq']) ~= 'table' then
    return {}, nil
  end
  local found, layerq = {}, message['layerq']
  if type(message.type) == 'string' then
    found.type = message.type
  end
  if type(message['__asgi_channel__']) == 'string' then
    found['__asgi_channel__'] = message['__asgi_channel__']
  end
  local envelope = {}
  if type(layerq.id) == 'string' then
    envelope.id = layerq.id
  end
  if type(layerq.enqueued) == 'number' then
    envelope.enqueued = layerq.enqueued
  end
  local attempts = layerq.max_attempts
  if type(attempts) == 'number' and attempts == math.floor(attempts) then
    envelope.max_attempts = attempts
  end
  return found, envelope
end

local function fixed_fields(payload, channel)
  if not payload then
    return {}
  end
  local ok, found, envelope = pcall(read_fields, payload)
  if not ok or not envelope or type(envelope.id) ~= 'string' or envelope.id == '' then
    return {}
  end
  local out = {'id', envelope.id, 'channel', found['__asgi_channel__'] or channel}
  if found.type then
    out[#out + 1] = 'type'
    out[#out + 1] = found.type
  end
  if envelope.enqueued then
    -- 17 digits read back exactly (Python's repr may write fewer).
    out[#out + 1] = 'enqueued_at'
    out[#out + 1] = string.format('%.17g', envelope.enqueued)
  end
  -- (Past 2^53 a Lua number is no longer exact: not an attempt count.)
  local attempts = envelope.max_attempts
  if attempts and math.abs(attempts) < 2 ^ 53 then
    out[#out + 1] = 'max_attempts'
    out[#out + 1] = string.format('%d', attempts)
  end
  return out
end
