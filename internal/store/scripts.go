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
