package store

import "github.com/redis/go-redis/v9"

// transitionScript: KEYS = job; ARGV = target state, field/value...
// Returns "OK", "" when there is no job, or the current state when the
// state machine does not allow the move. Terminal states have no exits.
var transitionScript = redis.NewScript(`
local allowed = {
  PENDING    = {SCHEDULED=true, DISPATCHED=true, DENIED=true, FAILED=true},
  SCHEDULED  = {DISPATCHED=true, DENIED=true, FAILED=true},
  DISPATCHED = {RUNNING=true, COMPLETED=true, FAILED=true},
  RUNNING    = {COMPLETED=true, FAILED=true},
}
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return '' end
local exits = allowed[cur]
if not exits or not exits[ARGV[1]] then return cur end
redis.call('HSET', KEYS[1], 'state', ARGV[1], unpack(ARGV, 2))
return 'OK'
`)

// startScript: KEYS = job, ctx; ARGV = worker id, updated_at.
// Moves a DISPATCHED job to RUNNING and returns {"OK", prompt}. Returns
// {""} when there is no job, {state} when the job is not DISPATCHED, and
// {"NOPROMPT"} (having marked the job FAILED) when its prompt is gone.
var startScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {''} end
if cur ~= 'DISPATCHED' then return {cur} end
local prompt = redis.call('GET', KEYS[2])
if not prompt then
  redis.call('HSET', KEYS[1], 'state', 'FAILED', 'updated_at', ARGV[2],
    'reason', 'the prompt expired or was deleted before a worker ran the job')
  return {'NOPROMPT'}
end
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'worker_id', ARGV[1], 'updated_at', ARGV[2])
return {'OK', prompt}
`)
