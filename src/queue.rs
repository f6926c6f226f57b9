//! The Redis backend of [`JobStore`], for the distributed mode: jobs, their
//! payloads and results, capacity and the queue live in Redis, with the key
//! names and TTLs of CONTRACT §2 so operators' `redis-cli` checks keep
//! working. Only this module knows Redis key names.
//!
//! Every step that reads and then writes is one Lua script, so two API pods
//! or workers never interleave: admission checks capacity and enqueues
//! atomically, and a claim takes a *lease* (`{p}:leases`, a sorted set of
//! deadlines) that the worker's heartbeat extends. A job whose lease ran
//! out (its worker was killed, lost the network, ran out of memory) goes
//! back to the head of the queue at the next claim. Each claim increments
//! the job's `attempt`, the fencing token: finishing, handing back or
//! heartbeating with an older attempt changes nothing, so a worker that
//! lost its lease cannot overwrite the result of the one that replaced it.
//! A job delivered `max_deliveries` times ends `failed` and is listed on
//! `{p}:dead`.
//!
//! The scripts build job keys from the prefix, which a Redis Cluster would
//! refuse; dedup2d targets one Redis (with replicas), as the original did.

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;

use std::time::{Duration, Instant};

use crate::callback::{Attempt, Due, Event, Outbox};
use crate::gc::{GcLedger, Run as GcRun, Totals as GcTotals};
use crate::jobs::{
    CancelOutcome, Claim, Claimed, Counts, Delivery, Job, JobError, JobStore, Lease, NewJob, Outcome, Payload, Status,
};
use crate::telemetry as t;

mod library;
pub use library::RedisLibrary;

/// Redis key names (CONTRACT §2).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    queue: String,
}

impl Keys {
    /// `prefix` is `DEDUP2D_REDIS_KEY_PREFIX`, `queue` is
    /// `DEDUP2D_ARQ_QUEUE_NAME` (kept whole: it is not under the prefix).
    pub fn new(prefix: &str, queue: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            queue: queue.to_string(),
        }
    }

    fn job(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    fn payload(&self, id: &str) -> String {
        format!("{}:payload:{id}", self.prefix)
    }

    fn result(&self, id: &str) -> String {
        format!("{}:result:{id}", self.prefix)
    }

    fn active(&self) -> String {
        format!("{}:active", self.prefix)
    }

    fn tenant_jobs(&self, tenant_id: &str) -> String {
        format!("{}:tenant:{tenant_id}:jobs", self.prefix)
    }

    fn leases(&self) -> String {
        format!("{}:leases", self.prefix)
    }

    fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// Callbacks waiting to be sent, scored by when (the outbox).
    fn callbacks(&self) -> String {
        format!("{}:callbacks", self.prefix)
    }

    /// `dedup2d gc`'s totals (a hash; no TTL).
    fn gc(&self) -> String {
        format!("{}:gc", self.prefix)
    }

    /// The last 100 `dedup2d gc` summaries, newest first (JSON).
    fn gc_runs(&self) -> String {
        format!("{}:gc:runs", self.prefix)
    }

    /// Says a gc run was recorded (a week), so a resend counts once.
    fn gc_run(&self, run_id: &str) -> String {
        format!("{}:gc:run:{run_id}", self.prefix)
    }

    /// Where the service stores uploads, for gc to check its own against.
    fn storage(&self) -> String {
        format!("{}:storage", self.prefix)
    }
}

/// How long a claim holds a job without a heartbeat, and how long keys live.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_seconds: f64,
    pub ttl_seconds: u64,
}

const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// One client (a small pool that reconnects by itself) shared by the job
/// store and the library of a process.
#[derive(Clone)]
pub struct Redis {
    client: Client,
}

impl Redis {
    /// Connects and checks Redis answers. Once connected the client retries
    /// for ever in the background, so a Redis restart is survived; while
    /// Redis is down, commands fail after 5 s instead of hanging.
    pub async fn connect(url: &str) -> Result<Redis, JobError> {
        let config = Config::from_url(url).map_err(unavailable)?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(5);
            })
            .set_policy(ReconnectPolicy::new_constant(0, 250))
            .build()
            .map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        Ok(Redis { client })
    }

    pub fn jobs(&self, keys: Keys, timing: Timing) -> RedisJobs {
        RedisJobs::new(self.client.clone(), keys, timing)
    }

    pub fn library(&self, keys: Keys) -> RedisLibrary {
        RedisLibrary::new(self.client.clone(), keys)
    }

    /// One PING; its round-trip time is exported as a gauge. Gives up after
    /// a second, so a readiness probe answers while Redis is down.
    pub async fn ping(&self) -> Result<Duration, JobError> {
        let started = Instant::now();
        let _: String = tokio::time::timeout(PING_TIMEOUT, self.client.ping(None))
            .await
            .map_err(|_| unavailable(format!("no answer to PING within {PING_TIMEOUT:?}")))?
            .map_err(unavailable)?;
        let rtt = started.elapsed();
        metrics::gauge!(t::REDIS_RTT_SECONDS).set(rtt.as_secs_f64());
        Ok(rtt)
    }

    /// Job keys carry a TTL and library keys none, so any eviction policy
    /// but `noeviction` can silently drop jobs or drawings when Redis fills.
    pub async fn eviction_warning(&self) -> Result<Option<String>, JobError> {
        let config = fred::types::CustomCommand::new_static("CONFIG", None, false);
        let reply: Vec<String> = self
            .client
            .custom(config, vec!["GET", "maxmemory-policy"])
            .await
            .map_err(unavailable)?;
        Ok(match reply.get(1).map(String::as_str) {
            None | Some("noeviction") => None,
            Some(policy) => Some(format!(
                "redis maxmemory-policy is {policy}: a full Redis evicts job or library keys; set noeviction"
            )),
        })
    }
}

pub struct RedisJobs {
    client: Client,
    keys: Keys,
    timing: Timing,
    scripts: Scripts,
}

struct Scripts {
    admit: Script,
    claim: Script,
    reclaim: Script,
    heartbeat: Script,
    finish: Script,
    hand_back: Script,
    cancel: Script,
    list: Script,
    requeue_dead: Script,
    replace_payload: Script,
    record_gc: Script,
    live_ids: Script,
    take_callback: Script,
    record_callback: Script,
}

/// KEYS: active, job, payload, tenant jobs, queue. ARGV: max, id, tenant,
/// created_at, payload, ttl, callback_url. Returns {admitted, live jobs}.
/// A job that exists already was admitted by this very call: the client
/// resends a script whose reply a dropped connection lost, and a second
/// run must not reset a job a worker may have claimed since.
const ADMIT: &str = r#"
local live = redis.call('SCARD', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return {1, live} end
if live >= tonumber(ARGV[1]) then return {0, live} end
redis.call('HSET', KEYS[2], 'job_id', ARGV[2], 'tenant_id', ARGV[3], 'status', 'pending',
  'created_at', ARGV[4], 'attempt', 0, 'deliveries', 0, 'cancel_requested', 0, 'callback_url', ARGV[7])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'callback_status', 'pending') end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6])
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
redis.call('RPUSH', KEYS[5], ARGV[2])
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4], KEYS[5]}) do redis.call('EXPIRE', key, ARGV[6]) end
return {1, live + 1}
"#;

/// Refreshes a key's TTL once half of it is gone, not on every call: an
/// EXPIRE is a write the AOF records, and claims and heartbeats are the
/// hottest scripts; reading the TTL is not.
const KEEP: &str = r#"
local function keep(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) * 500 then redis.call('EXPIRE', key, ttl) end
end
"#;

/// The start of [`CLAIM`] and all of [`RECLAIM`]: jobs whose lease ran out
/// go back to the head of the queue, their keys' TTL refreshed so a job
/// lives as long as it is handled. An id whose job expired (nothing was
/// refreshing it) gives its capacity back. KEYS: queue, leases, active.
/// ARGV[1]: now, ARGV[4]: prefix, ARGV[5]: ttl.
const RECLAIM_EXPIRED: &str = r#"
local now = tonumber(ARGV[1])
local reclaimed = 0
local function refresh(id)
  keep(ARGV[4] .. ':job:' .. id, ARGV[5])
  keep(ARGV[4] .. ':payload:' .. id, ARGV[5])
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[2], id)
  local job = ARGV[4] .. ':job:' .. id
  local status = redis.call('HGET', job, 'status')
  if status == 'in_progress' then
    redis.call('HSET', job, 'status', 'pending')
    redis.call('HDEL', job, 'started_at')
    redis.call('LPUSH', KEYS[1], id)
    refresh(id)
    redis.call('EXPIRE', KEYS[1], ARGV[5])
    redis.call('EXPIRE', KEYS[3], ARGV[5])
    reclaimed = reclaimed + 1
  elseif not status then
    redis.call('SREM', KEYS[3], id)
  end
end
"#;

/// After [`RECLAIM_EXPIRED`], in upkeep only: a few members of the active
/// set are checked, and one whose job is gone or ended gives its capacity
/// back. No script leaves one behind; this is the guard that keeps an
/// unforeseen leak from filling the queue for ever.
const SWEEP_ACTIVE: &str = r#"
for _, id in ipairs(redis.call('SRANDMEMBER', KEYS[3], 20)) do
  local status = redis.call('HGET', ARGV[4] .. ':job:' .. id, 'status')
  if status ~= 'pending' and status ~= 'in_progress' then
    redis.call('SREM', KEYS[3], id)
  end
end
"#;

/// Returns the number of jobs reclaimed.
const RECLAIM: &str = "return reclaimed";

/// After [`RECLAIM_EXPIRED`]. KEYS: queue, leases, active, dead, callbacks. ARGV:
/// now, lease seconds, max deliveries, prefix, ttl. Returns {kind,
/// reclaimed, id, attempt, payload, created_at | error}. `attempt`, the
/// fencing token, only ever grows; `deliveries` counts the runs that
/// did not finish, and is what a hand-back forgives and a replay resets.
const CLAIM: &str = r#"
while true do
  local id = redis.call('LPOP', KEYS[1])
  if not id then return {'empty', reclaimed} end
  local job = ARGV[4] .. ':job:' .. id
  local fields = redis.call('HMGET', job, 'status', 'attempt', 'deliveries', 'created_at')
  if fields[1] == 'pending' then
    local payload = redis.call('GET', ARGV[4] .. ':payload:' .. id)
    local attempt = tonumber(fields[2] or '0') + 1
    local deliveries = tonumber(fields[3] or '0')
    local refusal = nil
    if not payload then
      refusal = 'the job payload is gone (expired or deleted)'
    elseif deliveries >= tonumber(ARGV[3]) then
      refusal = 'gave up after ' .. deliveries .. ' deliveries that did not finish'
    end
    if refusal then
      redis.call('HSET', job, 'status', 'failed', 'error', refusal, 'finished_at', ARGV[1])
      redis.call('EXPIRE', job, ARGV[5])
      redis.call('SREM', KEYS[3], id)
      redis.call('RPUSH', KEYS[4], id)
      redis.call('EXPIRE', KEYS[4], ARGV[5])
      if redis.call('HGET', job, 'callback_status') == 'pending' then redis.call('ZADD', KEYS[5], ARGV[1], id) end
      return {'failed', reclaimed, id, attempt, payload or '', refusal}
    end
    redis.call('HSET', job, 'status', 'in_progress', 'started_at', ARGV[1], 'attempt', attempt,
      'deliveries', deliveries + 1)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
    refresh(id)
    return {'run', reclaimed, id, attempt, payload, fields[4]}
  elseif not fields[1] then
    redis.call('SREM', KEYS[3], id)
  end
end
"#;

/// KEYS: job, leases, payload, active. ARGV: id, attempt, deadline, ttl.
/// Returns 1 while the lease is this attempt's, 2 when a cancel was asked
/// for, else 0. A held lease refreshes the job's TTL, so a job runs as long
/// as its timeout allows whatever the TTL.
const HEARTBEAT: &str = r#"
local fields = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cancel_requested')
if fields[1] ~= 'in_progress' or fields[2] ~= ARGV[2] then
  if fields[3] == '1' then return 2 end
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
for _, key in ipairs({KEYS[1], KEYS[3], KEYS[4]}) do keep(key, ARGV[4]) end
return 1
"#;

/// KEYS: job, leases, active, result, callbacks. ARGV: id, attempt,
/// status, result, error, now, ttl. Returns 1 when recorded, also when
/// this very outcome already was (a resent call whose reply was lost).
/// A job with a callback enters the outbox in the same step.
const FINISH: &str = r#"
local fields = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if fields[1] == ARGV[3] and fields[2] == ARGV[2] then return 1 end
if fields[1] ~= 'in_progress' or fields[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[7]) end
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'callback_status') == 'pending' then redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1]) end
return 1
"#;

/// KEYS: job, leases, queue, payload. ARGV: id, attempt, deliveries
/// forgiven (1 when the worker was told to stop, 0 when the run gave up),
/// ttl.
const HAND_BACK: &str = r#"
local fields = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'deliveries')
if fields[1] ~= 'in_progress' or fields[2] ~= ARGV[2] then return 0 end
local deliveries = math.max(0, tonumber(fields[3] or '0') - tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'status', 'pending', 'deliveries', deliveries)
redis.call('HDEL', KEYS[1], 'started_at')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[1])
for _, key in ipairs({KEYS[1], KEYS[3], KEYS[4]}) do redis.call('EXPIRE', key, ARGV[4]) end
return 1
"#;

/// KEYS: job, active, queue, leases, payload, callbacks. ARGV: id,
/// tenant, now, ttl. Returns {outcome, status before, payload}. A job
/// canceled before it started skips its callback; a running one sends it.
const CANCEL: &str = r#"
local fields = redis.call('HMGET', KEYS[1], 'tenant_id', 'status')
if not fields[1] then return {'not_found', '', ''} end
if fields[1] ~= ARGV[2] then return {'forbidden', '', ''} end
if fields[2] ~= 'pending' and fields[2] ~= 'in_progress' then return {'finished', fields[2], ''} end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'cancel_requested', 1, 'finished_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[5], ARGV[4])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HGET', KEYS[1], 'callback_status') == 'pending' then
  if fields[2] == 'pending' then
    redis.call('HSET', KEYS[1], 'callback_status', 'skipped', 'callback_last_error', 'canceled_before_start',
      'callback_finished_at', ARGV[3])
  else
    redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
  end
end
return {'canceled', fields[2], redis.call('GET', KEYS[5]) or ''}
"#;

/// KEYS: dead, queue, active. ARGV: prefix, ttl. Every dead job still
/// stored goes back to pending with its deliveries forgotten (its attempt,
/// the fencing token, keeps growing); returns the ids requeued.
const REQUEUE_DEAD: &str = r#"
local requeued = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local job = ARGV[1] .. ':job:' .. id
  local fields = redis.call('HMGET', job, 'status', 'tenant_id', 'created_at')
  if fields[1] == 'failed' and redis.call('EXISTS', ARGV[1] .. ':payload:' .. id) == 1 then
    redis.call('HSET', job, 'status', 'pending', 'deliveries', 0)
    redis.call('HDEL', job, 'error', 'finished_at', 'started_at')
    -- The replay's outcome gets its own callback, whatever the failure's did.
    if (redis.call('HGET', job, 'callback_url') or '') ~= '' then
      redis.call('ZREM', ARGV[1] .. ':callbacks', id)
      redis.call('HSET', job, 'callback_status', 'pending', 'callback_attempts', 0)
      redis.call('HDEL', job, 'callback_http_status', 'callback_last_error', 'callback_finished_at')
    end
    redis.call('SADD', KEYS[3], id)
    redis.call('RPUSH', KEYS[2], id)
    local tenant_jobs = ARGV[1] .. ':tenant:' .. fields[2] .. ':jobs'
    redis.call('ZADD', tenant_jobs, fields[3], id)
    for _, key in ipairs({job, ARGV[1] .. ':payload:' .. id, KEYS[2], KEYS[3], tenant_jobs}) do
      redis.call('EXPIRE', key, ARGV[2])
    end
    requeued[#requeued + 1] = id
  end
end
redis.call('DEL', KEYS[1])
return requeued
"#;

/// KEYS: job, payload. ARGV: the payload as read, the new one. Returns 1
/// when replaced: only a pending job's payload, and only if nobody changed
/// it since it was read, so a worker that claimed the job meanwhile runs
/// the payload it read, once.
const REPLACE_PAYLOAD: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
return 1
"#;

/// KEYS: active, queue, dead. Every id a job that may still run has.
const LIVE_IDS: &str = r#"
local ids = redis.call('SMEMBERS', KEYS[1])
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  for _, id in ipairs(redis.call('LRANGE', key, 0, -1)) do ids[#ids + 1] = id end
end
return ids
"#;

/// KEYS: callbacks. ARGV: now, hold, prefix. The earliest due callback,
/// held until now + hold: {id, tenant, status, started_at, finished_at,
/// error, url, attempts, result}; {} when none is due. Entries whose job
/// expired or whose callback ended are dropped.
const TAKE_CALLBACK: &str = r#"
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 20)) do
  local job = ARGV[3] .. ':job:' .. id
  local f = redis.call('HMGET', job, 'tenant_id', 'status', 'started_at', 'finished_at', 'error',
    'callback_url', 'callback_attempts', 'callback_status')
  local ended = f[2] == 'completed' or f[2] == 'failed' or f[2] == 'canceled'
  if f[8] == 'pending' and ended and f[6] and f[6] ~= '' then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    return {id, f[1], f[2], f[3] or '', f[4] or '', f[5] or '', f[6], f[7] or '0',
      redis.call('GET', ARGV[3] .. ':result:' .. id) or ''}
  end
  redis.call('ZREM', KEYS[1], id)
end
return {}
"#;

/// KEYS: job, callbacks, result. ARGV: id, attempts before, callback
/// status, http status, error, next due ('' when it ended), now, ttl.
/// Returns 0 (nothing written) when another deliverer took it since. The
/// job's keys live a TTL past the next try, however far a receiver's
/// Retry-After put it.
const RECORD_CALLBACK: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'callback_status', 'callback_attempts')
if f[1] ~= 'pending' or (f[2] or '0') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'callback_status', ARGV[3], 'callback_attempts', tonumber(ARGV[2]) + 1,
  'callback_http_status', ARGV[4], 'callback_last_error', ARGV[5])
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'callback_finished_at', ARGV[7])
end
local ttl = tonumber(ARGV[8])
if ARGV[6] ~= '' then ttl = ttl + math.max(0, math.ceil(tonumber(ARGV[6]) - tonumber(ARGV[7]))) end
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ttl) end
return 1
"#;

/// KEYS: gc totals, gc runs, this run's marker. ARGV: run id, dry run
/// (1/0), deleted, bytes freed, finished at, duration, summary, complete
/// (1/0). The marker (kept a week) makes a resent record (see ADMIT)
/// count once; only a complete run moves `last_run_at`.
const RECORD_GC: &str = r#"
if not redis.call('SET', KEYS[3], 1, 'NX', 'EX', 604800) then return 0 end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'dry_runs', 1)
else
  redis.call('HINCRBY', KEYS[1], 'runs', 1)
  redis.call('HINCRBY', KEYS[1], 'files_deleted', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'bytes_freed', ARGV[4])
end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'last_run_at', ARGV[5], 'last_duration_seconds', ARGV[6])
end
redis.call('LPUSH', KEYS[2], ARGV[7])
redis.call('LTRIM', KEYS[2], 0, 99)
return 1
"#;

/// KEYS: tenant jobs. ARGV: prefix, status filter ('' for any), limit.
/// Newest first; forgets ids whose job expired. Returns {total, ids...}.
const LIST: &str = r#"
local ids = redis.call('ZREVRANGE', KEYS[1], 0, -1)
local total, out = 0, {}
for _, id in ipairs(ids) do
  local status = redis.call('HGET', ARGV[1] .. ':job:' .. id, 'status')
  if not status then
    redis.call('ZREM', KEYS[1], id)
  elseif ARGV[2] == '' or status == ARGV[2] then
    total = total + 1
    if #out < tonumber(ARGV[3]) then out[#out + 1] = id end
  end
end
table.insert(out, 1, total)
return out
"#;

impl RedisJobs {
    fn new(client: Client, keys: Keys, timing: Timing) -> RedisJobs {
        RedisJobs {
            client,
            keys,
            timing,
            scripts: Scripts {
                admit: Script::from_lua(ADMIT),
                claim: Script::from_lua(format!("{KEEP}{RECLAIM_EXPIRED}{CLAIM}")),
                reclaim: Script::from_lua(format!("{KEEP}{RECLAIM_EXPIRED}{SWEEP_ACTIVE}{RECLAIM}")),
                heartbeat: Script::from_lua(format!("{KEEP}{HEARTBEAT}")),
                finish: Script::from_lua(FINISH),
                hand_back: Script::from_lua(HAND_BACK),
                cancel: Script::from_lua(CANCEL),
                list: Script::from_lua(LIST),
                requeue_dead: Script::from_lua(REQUEUE_DEAD),
                replace_payload: Script::from_lua(REPLACE_PAYLOAD),
                record_gc: Script::from_lua(RECORD_GC),
                live_ids: Script::from_lua(LIVE_IDS),
                take_callback: Script::from_lua(TAKE_CALLBACK),
                record_callback: Script::from_lua(RECORD_CALLBACK),
            },
        }
    }

    /// Jobs that ended `failed` after too many deliveries, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<String>, JobError> {
        self.client.lrange(self.keys.dead(), 0, -1).await.map_err(unavailable)
    }

    /// The ids waiting in the queue, oldest first.
    pub async fn queued(&self) -> Result<Vec<String>, JobError> {
        self.client.lrange(&self.keys.queue, 0, -1).await.map_err(unavailable)
    }

    /// A job's payload as stored (JSON), if it still is.
    pub async fn raw_payload(&self, job_id: &str) -> Result<Option<String>, JobError> {
        self.client.get(self.keys.payload(job_id)).await.map_err(unavailable)
    }

    /// Replaces a pending job's payload if it is still `read` (see
    /// [`REPLACE_PAYLOAD`]); false when the job moved on or the payload
    /// changed.
    pub async fn replace_payload(&self, job_id: &str, read: &str, new: &str) -> Result<bool, JobError> {
        let keys = vec![self.keys.job(job_id), self.keys.payload(job_id)];
        let replaced: i64 = self
            .run(
                &self.scripts.replace_payload,
                keys,
                vec![read.to_string(), new.to_string()],
            )
            .await?;
        Ok(replaced == 1)
    }

    /// Records an attempt's outcome unless another attempt owns the job.
    async fn record(&self, job_id: &str, attempt: u32, outcome: Outcome, now: f64) -> Result<bool, JobError> {
        let (status, result, error) = match outcome {
            Outcome::Completed(result) => (Status::Completed, to_json(&result)?, String::new()),
            Outcome::Failed(error) => (Status::Failed, String::new(), error),
        };
        let keys = vec![
            self.keys.job(job_id),
            self.keys.leases(),
            self.keys.active(),
            self.keys.result(job_id),
            self.keys.callbacks(),
        ];
        let args = vec![
            job_id.to_string(),
            attempt.to_string(),
            status.as_str().to_string(),
            result,
            error,
            now.to_string(),
            self.timing.ttl_seconds.to_string(),
        ];
        let recorded: i64 = self.run(&self.scripts.finish, keys, args).await?;
        Ok(recorded == 1)
    }

    /// Puts the dead-lettered jobs back in the queue, as new (an operator's
    /// replay after fixing what killed their workers). Jobs whose keys
    /// expired meanwhile are dropped from the list.
    pub async fn requeue_dead(&self) -> Result<Vec<String>, JobError> {
        let keys = vec![self.keys.dead(), self.keys.queue.clone(), self.keys.active()];
        let args = vec![self.keys.prefix.clone(), self.timing.ttl_seconds.to_string()];
        self.run(&self.scripts.requeue_dead, keys, args).await
    }

    async fn run<R: FromValue>(&self, script: &Script, keys: Vec<String>, args: Vec<String>) -> Result<R, JobError> {
        script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable)
    }

    fn job_from_hash(&self, fields: std::collections::HashMap<String, String>, result: Option<String>) -> Option<Job> {
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<f64>().ok());
        let text = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        Some(Job {
            job_id: fields.get("job_id")?.clone(),
            tenant_id: fields.get("tenant_id")?.clone(),
            status: Status::parse(fields.get("status")?)?,
            created_at: number("created_at")?,
            started_at: number("started_at"),
            finished_at: number("finished_at"),
            result: result.and_then(|r| serde_json::from_str(&r).ok()),
            error: text("error"),
            callback_status: text("callback_status"),
            callback_attempts: number("callback_attempts").map_or(0, |n| n as u32),
            callback_http_status: number("callback_http_status").map(|n| n as u16),
            callback_finished_at: number("callback_finished_at"),
            callback_last_error: text("callback_last_error"),
        })
    }
}

fn count_reclaims(reclaimed: u64) {
    if reclaimed > 0 {
        tracing::warn!(message = "reclaimed jobs whose worker stopped heartbeating", reclaimed);
        metrics::counter!(t::LEASE_RECLAIMS_TOTAL).increment(reclaimed);
    }
}

fn unavailable(e: impl std::fmt::Display) -> JobError {
    JobError::Unavailable(format!("redis: {e}"))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, JobError> {
    serde_json::to_string(value).map_err(|e| JobError::Unavailable(format!("cannot encode a job: {e}")))
}

#[async_trait]
impl Outbox for RedisJobs {
    async fn take_due(&self, now: f64, hold: f64) -> Result<Option<Due>, JobError> {
        let keys = vec![self.keys.callbacks()];
        let args = vec![now.to_string(), hold.to_string(), self.keys.prefix.clone()];
        let found: Vec<String> = self.run(&self.scripts.take_callback, keys, args).await?;
        let Ok(
            [
                job_id,
                tenant_id,
                status,
                started_at,
                finished_at,
                error,
                url,
                attempts,
                result,
            ],
        ) = <[String; 9]>::try_from(found)
        else {
            return Ok(None);
        };
        Ok(Some(Due {
            url,
            attempts: attempts.parse().unwrap_or(0),
            event: Event {
                job_id,
                tenant_id,
                status,
                started_at: started_at.parse().ok(),
                finished_at: finished_at.parse().ok(),
                result: serde_json::from_str(&result).ok(),
                error: Some(error).filter(|e| !e.is_empty()),
            },
        }))
    }

    async fn record_attempt(
        &self,
        job_id: &str,
        attempts_before: u32,
        attempt: &Attempt,
        now: f64,
    ) -> Result<bool, JobError> {
        let (status, http_status, error, due) = attempt.fields();
        let keys = vec![self.keys.job(job_id), self.keys.callbacks(), self.keys.result(job_id)];
        let args = vec![
            job_id.to_string(),
            attempts_before.to_string(),
            status.to_string(),
            http_status.map(|s| s.to_string()).unwrap_or_default(),
            error.unwrap_or_default().to_string(),
            due.map(|at| at.to_string()).unwrap_or_default(),
            now.to_string(),
            self.timing.ttl_seconds.to_string(),
        ];
        let recorded: i64 = self.run(&self.scripts.record_callback, keys, args).await?;
        Ok(recorded == 1)
    }
}

/// Payloads are read this many at a time.
const MGET_CHUNK: usize = 500;

#[async_trait]
impl GcLedger for RedisJobs {
    async fn live_payloads(&self) -> Result<Vec<String>, JobError> {
        // One script, so a job moving between the three (a replay of the
        // dead letters) cannot be missed between reads.
        let keys = vec![self.keys.active(), self.keys.queue.clone(), self.keys.dead()];
        let mut ids: Vec<String> = self.run(&self.scripts.live_ids, keys, vec![]).await?;
        ids.sort_unstable();
        ids.dedup();
        let mut live = Vec::new();
        for chunk in ids.chunks(MGET_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|id| self.keys.payload(id)).collect();
            let payloads: Vec<Option<String>> = self.client.mget(keys).await.map_err(unavailable)?;
            live.extend(payloads.into_iter().flatten());
        }
        Ok(live)
    }

    async fn storage_location(&self) -> Result<Option<String>, JobError> {
        self.client.get(self.keys.storage()).await.map_err(unavailable)
    }

    async fn set_storage_location(&self, location: &str) -> Result<(), JobError> {
        self.client
            .set::<(), _, _>(self.keys.storage(), location, None, None, false)
            .await
            .map_err(unavailable)
    }

    async fn record_gc(&self, run: &GcRun) -> Result<(), JobError> {
        let keys = vec![self.keys.gc(), self.keys.gc_runs(), self.keys.gc_run(&run.run_id)];
        let args = vec![
            run.run_id.clone(),
            if run.dry_run { "1" } else { "0" }.to_string(),
            run.deleted.to_string(),
            run.bytes_freed.to_string(),
            run.finished_at.to_string(),
            run.duration_seconds().to_string(),
            to_json(run)?,
            if run.complete() { "1" } else { "0" }.to_string(),
        ];
        let _: i64 = self.run(&self.scripts.record_gc, keys, args).await?;
        Ok(())
    }

    async fn gc_totals(&self) -> Result<GcTotals, JobError> {
        let fields: std::collections::HashMap<String, String> =
            self.client.hgetall(self.keys.gc()).await.map_err(unavailable)?;
        let count = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let seconds = |name: &str| fields.get(name).and_then(|v| v.parse().ok());
        Ok(GcTotals {
            runs: count("runs"),
            dry_runs: count("dry_runs"),
            files_deleted: count("files_deleted"),
            bytes_freed: count("bytes_freed"),
            last_run_at: seconds("last_run_at"),
            last_duration_seconds: seconds("last_duration_seconds"),
        })
    }
}

#[async_trait]
impl JobStore for RedisJobs {
    async fn admit(&self, job: NewJob, max_jobs: u64) -> Result<(), JobError> {
        let tenant = job.payload.tenant_id.clone();
        let keys = vec![
            self.keys.active(),
            self.keys.job(&job.job_id),
            self.keys.payload(&job.job_id),
            self.keys.tenant_jobs(&tenant),
            self.keys.queue.clone(),
        ];
        let args = vec![
            max_jobs.to_string(),
            job.job_id.clone(),
            tenant,
            job.created_at.to_string(),
            to_json(&job.payload)?,
            self.timing.ttl_seconds.to_string(),
            job.payload.callback_url.clone().unwrap_or_default(),
        ];
        let (admitted, live): (i64, u64) = self.run(&self.scripts.admit, keys, args).await?;
        if admitted == 1 {
            Ok(())
        } else {
            Err(JobError::QueueFull {
                max: max_jobs,
                current: live,
            })
        }
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, JobError> {
        let fields: std::collections::HashMap<String, String> =
            self.client.hgetall(self.keys.job(job_id)).await.map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let result: Option<String> = self.client.get(self.keys.result(job_id)).await.map_err(unavailable)?;
        Ok(self.job_from_hash(fields, result))
    }

    async fn list(&self, tenant_id: &str, status: Option<Status>, limit: u32) -> Result<(Vec<Job>, u64), JobError> {
        let args = vec![
            self.keys.prefix.clone(),
            status.map_or("", Status::as_str).to_string(),
            limit.to_string(),
        ];
        let found: Vec<Value> = self
            .run(&self.scripts.list, vec![self.keys.tenant_jobs(tenant_id)], args)
            .await?;
        let total = found.first().and_then(Value::as_u64).unwrap_or(0);
        let mut jobs = Vec::new();
        for id in found.iter().skip(1).filter_map(Value::as_string) {
            if let Some(job) = self.get(&id).await? {
                jobs.push(job);
            }
        }
        Ok((jobs, total))
    }

    async fn cancel(&self, job_id: &str, tenant_id: &str, now: f64) -> Result<CancelOutcome, JobError> {
        let keys = vec![
            self.keys.job(job_id),
            self.keys.active(),
            self.keys.queue.clone(),
            self.keys.leases(),
            self.keys.payload(job_id),
            self.keys.callbacks(),
        ];
        let args = vec![
            job_id.to_string(),
            tenant_id.to_string(),
            now.to_string(),
            self.timing.ttl_seconds.to_string(),
        ];
        let (outcome, was, payload): (String, String, String) = self.run(&self.scripts.cancel, keys, args).await?;
        let status = Status::parse(&was).unwrap_or(Status::Failed);
        Ok(match outcome.as_str() {
            "not_found" => CancelOutcome::NotFound,
            "forbidden" => CancelOutcome::Forbidden,
            "finished" => CancelOutcome::AlreadyFinished(status),
            _ => CancelOutcome::Canceled {
                was: status,
                file_ref: serde_json::from_str::<Payload>(&payload).ok().and_then(|p| p.file_ref),
            },
        })
    }

    async fn claim(&self, now: f64, max_deliveries: u32) -> Result<Claim, JobError> {
        let keys = vec![
            self.keys.queue.clone(),
            self.keys.leases(),
            self.keys.active(),
            self.keys.dead(),
            self.keys.callbacks(),
        ];
        let args = vec![
            now.to_string(),
            self.timing.lease_seconds.to_string(),
            max_deliveries.to_string(),
            self.keys.prefix.clone(),
            self.timing.ttl_seconds.to_string(),
        ];
        let found: Vec<Value> = self.run(&self.scripts.claim, keys, args).await?;
        count_reclaims(found.get(1).and_then(Value::as_u64).unwrap_or(0));
        let text = |i: usize| found.get(i).and_then(Value::as_string).unwrap_or_default();
        let payload = serde_json::from_str::<Payload>(&text(4));
        Ok(match text(0).as_str() {
            "run" => match payload {
                Ok(payload) => Claim::Run(Claimed {
                    job_id: text(2),
                    attempt: found.get(3).and_then(Value::as_u64).unwrap_or(0) as u32,
                    payload,
                    created_at: text(5).parse().unwrap_or(now),
                }),
                Err(e) => {
                    let (job_id, attempt) = (text(2), found.get(3).and_then(Value::as_u64).unwrap_or(0) as u32);
                    let error = format!("the job's payload does not read: {e}");
                    self.record(&job_id, attempt, Outcome::Failed(error.clone()), now)
                        .await?;
                    Claim::Failed {
                        job_id,
                        file_ref: None,
                        error,
                    }
                }
            },
            "failed" => {
                metrics::counter!(t::JOBS_DEAD_LETTERED_TOTAL).increment(1);
                // The upload stays: `requeue_dead` may run the job again.
                // Once the job's keys expire no live job needs it, and `gc`
                // removes it.
                Claim::Failed {
                    job_id: text(2),
                    file_ref: None,
                    error: text(5),
                }
            }
            _ => Claim::Empty,
        })
    }

    async fn finish(&self, job: &Claimed, outcome: Outcome, now: f64) -> Result<bool, JobError> {
        self.record(&job.job_id, job.attempt, outcome, now).await
    }

    async fn heartbeat(&self, job: &Claimed, now: f64) -> Result<Lease, JobError> {
        let deadline = now + self.timing.lease_seconds;
        let kept: i64 = self
            .run(
                &self.scripts.heartbeat,
                vec![
                    self.keys.job(&job.job_id),
                    self.keys.leases(),
                    self.keys.payload(&job.job_id),
                    self.keys.active(),
                ],
                vec![
                    job.job_id.clone(),
                    job.attempt.to_string(),
                    deadline.to_string(),
                    self.timing.ttl_seconds.to_string(),
                ],
            )
            .await?;
        Ok(match kept {
            1 => Lease::Held,
            2 => Lease::Canceled,
            _ => Lease::Lost,
        })
    }

    async fn hand_back(&self, job: &Claimed, delivery: Delivery) -> Result<(), JobError> {
        let keys = vec![
            self.keys.job(&job.job_id),
            self.keys.leases(),
            self.keys.queue.clone(),
            self.keys.payload(&job.job_id),
        ];
        let forgiven = u32::from(delivery == Delivery::Uncounted);
        let args = vec![
            job.job_id.clone(),
            job.attempt.to_string(),
            forgiven.to_string(),
            self.timing.ttl_seconds.to_string(),
        ];
        let _: i64 = self.run(&self.scripts.hand_back, keys, args).await?;
        Ok(())
    }

    async fn counts(&self) -> Result<Counts, JobError> {
        let pending: u64 = self.client.llen(&self.keys.queue).await.map_err(unavailable)?;
        let running: u64 = self.client.zcard(self.keys.leases()).await.map_err(unavailable)?;
        let dead: u64 = self.client.llen(self.keys.dead()).await.map_err(unavailable)?;
        Ok(Counts { pending, running, dead })
    }

    /// Redis drops finished jobs' keys at their TTL ([`LIST`] forgets the
    /// ids); what upkeep does here is return jobs whose worker is gone to
    /// the queue even while no worker claims.
    async fn expire(&self, now: f64) -> Result<u64, JobError> {
        let keys = vec![self.keys.queue.clone(), self.keys.leases(), self.keys.active()];
        let args = vec![
            now.to_string(),
            String::new(),
            String::new(),
            self.keys.prefix.clone(),
            self.timing.ttl_seconds.to_string(),
        ];
        let reclaimed: u64 = self.run(&self.scripts.reclaim, keys, args).await?;
        count_reclaims(reclaimed);
        Ok(0)
    }
}
