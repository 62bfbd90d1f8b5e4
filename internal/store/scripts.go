package store

import "github.com/redis/go-redis/v9"

// Every script touches one job and its shard's indexes: keys of one hash
// slot (keys.go). A deadline argument is Unix milliseconds for the job's
// entry in lease:{s}, or "" to take the job out of it.
//
// A script that changes a job answers {"OK"} and no record: the store
// reads the record with a plain HGETALL sent right behind the script, in
// the same round trip (batch.go). Building the reply in Lua would cost
// Redis several times the HGETALL itself (measured: a transition's 8.7 µs
// became 23.6 µs), for every change of every job.

// createScript: KEYS = job, ctx, index, lease, idempotency; ARGV = job id,
// input, retention ms, index trim bound ("" for no trim), request
// fingerprint, deadline, field/value... Records a new job that carries an
// idempotency key, in one step: it first looks for an earlier job under
// that key and answers {"EXISTS", "<id> <fingerprint>"} instead of
// creating a second one; otherwise {"OK"}. Given a bound, the tenant's
// index drops entries older than the retention. A job without a key needs
// no check, and is created with plain commands in a MULTI/EXEC
// transaction instead (createCommands), at half the cost to Redis.
var createScript = redis.NewScript(`
local prev = redis.call('GET', KEYS[5])
if prev then return {'EXISTS', prev} end
redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[5], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
if ARGV[4] ~= '' then redis.call('ZREMRANGEBYLEX', KEYS[3], '-', ARGV[4]) end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
return {'OK'}
`)

// transitionScript: KEYS = job, lease, dlq; ARGV = target state, expected
// attempt ("0": any), now (µs), retry ("1": start the next attempt), the
// outcome of the attempt a retry ends, deadline, dead letter ("1": list
// the job in dlq, for a move to FAILED or TIMEOUT), job id, overdue ("1":
// only if the job's deadline has passed, for the reconciler's moves; now
// in ms), holder ("": any; else only if the job records no worker or this
// one, for a worker's result), field/value... A move that ends an attempt (a retry, or
// a final state) records the attempt's outcome, worker, end time and
// reason in "a:<attempt>" (tab-separated), so the job keeps its attempt
// history. A move to DISPATCHED drops the reason the job waited for (no
// live worker, a re-drive), which would otherwise outlive the wait on the
// record of a job that ran. Answers {"OK"}, {""} when there is no job, or
// {"CONFLICT", current state, attempt} when the state machine or the
// attempt guard refuses the move.
// Terminal states have no exits; a retry goes back to PENDING with the
// attempt incremented.
var transitionScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker_id', 'reason', 'version')
if not cur[1] then return {''} end
local s, to = cur[1], ARGV[1]
local exits = ''
if s == 'PENDING' then exits = ',SCHEDULED,DISPATCHED,DENIED,FAILED,CANCELLED,AWAITING_APPROVAL,'
elseif s == 'AWAITING_APPROVAL' then exits = ',PENDING,DENIED,CANCELLED,'
elseif s == 'SCHEDULED' then exits = ',DISPATCHED,DENIED,FAILED,CANCELLED,'
elseif s == 'DISPATCHED' then exits = ',RUNNING,COMPLETED,FAILED,TIMEOUT,CANCELLED,PENDING,'
elseif s == 'RUNNING' then exits = ',COMPLETED,FAILED,TIMEOUT,CANCELLED,PENDING,' end
if not string.find(exits, ',' .. to .. ',', 1, true) or (ARGV[2] ~= '0' and cur[2] ~= ARGV[2]) then
  return {'CONFLICT', cur[1], cur[2]}
end
if ARGV[10] ~= '' and cur[3] and cur[3] ~= ARGV[10] then return {'CONFLICT', cur[1], cur[2]} end
local id = ARGV[8]
if ARGV[9] ~= '' then
  local due = redis.call('ZSCORE', KEYS[2], id)
  if not due or tonumber(due) > tonumber(ARGV[9]) then return {'CONFLICT', cur[1], cur[2]} end
end
local retry = ARGV[4] == '1'
local set = {'state', to, 'updated_at', ARGV[3], 't:' .. to, ARGV[3], 'version', (tonumber(cur[5]) or 0) + 1}
-- The worker and reason after the change: the change's own, else the
-- record's. A retry's history names the worker of the attempt it ends.
local worker, reason, keepsWorker, setsReason = cur[3] or '', cur[4] or '', false, false
for i = 11, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  if f == 'worker_id' then worker, keepsWorker = v, true elseif f == 'reason' then reason, setsReason = v, true end
  set[#set + 1] = f
  set[#set + 1] = v
end
if retry then
  worker = cur[3] or ''
  set[#set + 1] = 'attempt'
  set[#set + 1] = tonumber(cur[2]) + 1
end
if retry or string.find(',COMPLETED,FAILED,DENIED,CANCELLED,TIMEOUT,', ',' .. to .. ',', 1, true) then
  local outcome = to
  if retry then outcome = ARGV[5] end
  set[#set + 1] = 'a:' .. cur[2]
  set[#set + 1] = outcome .. '\t' .. worker .. '\t' .. ARGV[3] .. '\t' .. reason
end
redis.call('HSET', KEYS[1], unpack(set))
if retry and not keepsWorker then redis.call('HDEL', KEYS[1], 'worker_id') end
if to == 'DISPATCHED' and cur[4] and not setsReason then redis.call('HDEL', KEYS[1], 'reason') end
if ARGV[6] == '' then redis.call('ZREM', KEYS[2], id) else redis.call('ZADD', KEYS[2], ARGV[6], id) end
if ARGV[7] == '1' and (to == 'FAILED' or to == 'TIMEOUT') then
  redis.call('ZADD', KEYS[3], math.floor(tonumber(ARGV[3]) / 1000), id)
end
return {'OK'}
`)

// startScript: KEYS = job, ctx, lease; ARGV = worker id, now (µs),
// attempt, deadline, job id, takeover ("1": a redelivery of the attempt,
// whose first holder stopped acknowledging it). Moves a DISPATCHED job
// (or, on a takeover, a RUNNING one, whose reason then names the worker
// it is taken from, or that it handed the job back as it stopped:
// HandBack) to RUNNING on this worker and answers {"OK", input}. Answers {""} when there is no job,
// {"CONFLICT", state, attempt} when the job is not at that attempt in a
// state it may start from, and {"NOPROMPT"} (having
// marked the job FAILED) when its input is gone.
var startScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'version', 'worker_id', 'handed_back')
if not cur[1] then return {''} end
local version = (tonumber(cur[3]) or 0) + 1
local ok = cur[1] == 'DISPATCHED' or (cur[1] == 'RUNNING' and ARGV[6] == '1')
if not ok or cur[2] ~= ARGV[3] then return {'CONFLICT', cur[1], cur[2]} end
local input = redis.call('GET', KEYS[2])
if not input then
  local why = 'the prompt expired or was deleted before a worker ran the job'
  redis.call('HSET', KEYS[1], 'state', 'FAILED', 'updated_at', ARGV[2], 't:FAILED', ARGV[2], 'reason', why,
    'a:' .. ARGV[3], 'FAILED\t' .. ARGV[1] .. '\t' .. ARGV[2] .. '\t' .. why, 'version', version)
  redis.call('ZREM', KEYS[3], ARGV[5])
  return {'NOPROMPT'}
end
local set = {'state', 'RUNNING', 'worker_id', ARGV[1], 'updated_at', ARGV[2], 't:RUNNING', ARGV[2], 'version', version}
if cur[1] == 'RUNNING' then
  local prev = cur[4] or ''
  local why = 'taken over from worker ' .. prev .. ', which stopped answering for it (its lease ran out)'
  if cur[5] == prev then why = 'handed back by worker ' .. prev .. ' as it stopped; run again on worker ' .. ARGV[1] end
  if prev == ARGV[1] then why = 'run again on worker ' .. prev .. ' after the bus redelivered it' end
  set[#set + 1] = 'reason'
  set[#set + 1] = why
end
redis.call('HSET', KEYS[1], unpack(set))
if cur[5] then redis.call('HDEL', KEYS[1], 'handed_back') end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return {'OK', input}
`)

// handBackScript: KEYS = job; ARGV = attempt, worker id. Notes that the
// worker running the job at that attempt hands it back (it stops), for
// the reason of the worker that takes it over (startScript). Answers 1, or
// 0 when the job is not RUNNING at that attempt on that worker.
var handBackScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker_id')
if cur[1] ~= 'RUNNING' or cur[2] ~= ARGV[1] or cur[3] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'handed_back', ARGV[2])
return 1
`)

// finishScript: KEYS = job, res, lease; ARGV = attempt, now (µs), output,
// retention ms, output size, job id, usage ("" for none), worker id (the
// worker that ran the attempt), start time (µs: the worker ran a
// DISPATCHED job without recording it RUNNING; "" for a job RUNNING on
// that worker). Stores the output of the attempt and records it COMPLETED,
// in one step, and answers like transitionScript. A job RUNNING at that
// attempt on another worker (which took it over) is a conflict: the late
// result of the worker that lost it is not recorded.
var finishScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker_id', 'version')
if not cur[1] then return {''} end
local from, worker = 'RUNNING', ARGV[8]
if ARGV[9] ~= '' then from = 'DISPATCHED' end
if cur[1] ~= from or cur[2] ~= ARGV[1] or (from == 'RUNNING' and cur[3] ~= worker) then
  return {'CONFLICT', cur[1], cur[2]}
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
local set = {'state', 'COMPLETED', 'updated_at', ARGV[2], 't:COMPLETED', ARGV[2], 'result_size', ARGV[5],
  'a:' .. ARGV[1], 'COMPLETED\t' .. worker .. '\t' .. ARGV[2] .. '\t', 'version', (tonumber(cur[4]) or 0) + 1}
if from == 'DISPATCHED' then
  set[#set + 1] = 'worker_id'
  set[#set + 1] = ARGV[8]
  set[#set + 1] = 't:RUNNING'
  set[#set + 1] = ARGV[9]
end
if ARGV[7] ~= '' then
  set[#set + 1] = 'usage'
  set[#set + 1] = ARGV[7]
end
redis.call('HSET', KEYS[1], unpack(set))
redis.call('ZREM', KEYS[3], ARGV[6])
return {'OK'}
`)

// waitScript: KEYS = job; ARGV = attempt, now (µs), reason, pool. Records
// the pool a PENDING job was routed to and why it is still waiting (for a
// worker, say) without changing its state, which the state machine of
// transitionScript could not do: there is no PENDING → PENDING move.
// Answers like transitionScript, with {"CONFLICT", state, attempt} when
// the job is no longer PENDING at that attempt, so a job that moved on
// keeps its own reason.
var waitScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if not cur[1] then return {''} end
if cur[1] ~= 'PENDING' or cur[2] ~= ARGV[1] then return {'CONFLICT', cur[1], cur[2]} end
redis.call('HSET', KEYS[1], 'reason', ARGV[3], 'pool', ARGV[4], 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return {'OK'}
`)

// leaseScript: KEYS = job, lease; ARGV = states (comma-separated),
// attempt, worker id ("" for any), deadline, job id. Moves the job's
// deadline when it is in one of the states at that attempt (and on that
// worker): a worker extends its lease on a long job, the reconciler puts
// off the next re-drive of a PENDING job. Answers {"OK"}, {""} or
// {"CONFLICT", state, attempt}.
var leaseScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'worker_id')
if not cur[1] then return {''} end
if not string.find(',' .. ARGV[1] .. ',', ',' .. cur[1] .. ',', 1, true) or cur[2] ~= ARGV[2]
  or (ARGV[3] ~= '' and cur[3] ~= ARGV[3]) then
  return {'CONFLICT', cur[1], cur[2]}
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return {'OK'}
`)

// dropScript: KEYS = job, dlq; ARGV = job id, reason, now (µs), attempt.
// Takes a dead letter out of dlq and records the reason given (the job
// keeps its state), if the job is still at that attempt (the one whose
// reason was read). Answers 1, or 0 for a job not in dlq, or at another
// attempt.
var dropScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[4] then return 0 end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'reason', ARGV[2], 'updated_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
`)

// reviveScript: KEYS = job, lease, dlq; ARGV = now (µs), deadline, reason,
// job id. Gives a dead letter (a FAILED or TIMEOUT job listed in dlq) one
// more attempt: PENDING at the next attempt, with room for it under
// max_attempts, out of dlq and back under a deadline. Answers like
// transitionScript; {"CONFLICT", state, attempt} for a job that is not a
// dead letter.
var reviveScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'max_attempts')
if not cur[1] then return {''} end
if (cur[1] ~= 'FAILED' and cur[1] ~= 'TIMEOUT') or not redis.call('ZSCORE', KEYS[3], ARGV[4]) then
  return {'CONFLICT', cur[1], cur[2]}
end
local next = tonumber(cur[2]) + 1
redis.call('HSET', KEYS[1], 'state', 'PENDING', 'attempt', next, 'updated_at', ARGV[1], 't:PENDING', ARGV[1], 'reason', ARGV[3])
if tonumber(cur[3]) < next then redis.call('HSET', KEYS[1], 'max_attempts', next) end
redis.call('HDEL', KEYS[1], 'worker_id')
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return {'OK'}
`)
