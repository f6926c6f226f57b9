//! The Redis backend of [`LibraryStore`], [`StatsStore`] and
//! [`LibraryFeed`], for the distributed mode: every API and worker process
//! reads and writes the same libraries, and follows the others' writes
//! through the feed.
//!
//! Per tenant, under the prefix: `lib:{tenant}:drawings` (hash, id → JSON
//! row), `lib:{tenant}:thumbs` (hash, id → raw thumbnail bytes) and
//! `lib:{tenant}:order` (sorted set, all scores 0, members
//! `{created_at as 16 sortable hex digits}:{id}`, so that lexicographic
//! order is the embedded store's `(created_at, drawing_id)` and `all`
//! pages with a cursor that a concurrent delete cannot shift). Counters
//! are the hash `stats:{tenant}`. The feed is the stream `lib:changes`
//! (fields `tenant`, `drawing`) and the hash `lib:changes:meta`: `epoch`,
//! a random id made by the first write or position (a position from
//! another epoch means Redis lost the library), and `trimmed`, the newest entry id
//! trimmed away (a position older than it has missed changes).
//!
//! None of these keys expire: they are customers' libraries, unlike jobs.
//! Every write is one Lua script that changes the drawing and appends to
//! the feed together, so no reader sees a drawing its feed entry misses.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};

use super::Keys;
use crate::engine::{Details, Features};
use crate::library::{Change, Drawing, FeedPosition, LibraryError, LibraryFeed, LibraryStore};
use crate::stats::{StatsError, StatsStore, TenantStats};
use crate::store::FileRef;

impl Keys {
    fn library(&self, tenant_id: &str, part: &str) -> String {
        format!("{}:lib:{tenant_id}:{part}", self.prefix)
    }

    fn changes(&self) -> String {
        format!("{}:lib:changes", self.prefix)
    }

    fn changes_meta(&self) -> String {
        format!("{}:lib:changes:meta", self.prefix)
    }

    fn stats(&self, tenant_id: &str) -> String {
        format!("{}:stats:{tenant_id}", self.prefix)
    }
}

/// Feed entries kept by default: at a few writes a second, days of
/// changes, so only a process stalled that long has to reload.
const KEEP_CHANGES: u64 = 100_000;
/// Rows read per script call by `all`, so a million-drawing tenant never
/// comes back in one reply (nor holds Redis for one long script).
const ALL_BATCH: usize = 500;
/// `set_features` rewrites a row it read; this many tries if other
/// processes keep changing the row meanwhile.
const SET_FEATURES_TRIES: usize = 10;

pub struct RedisLibrary {
    client: Client,
    keys: Keys,
    keep_changes: u64,
    scripts: Scripts,
}

struct Scripts {
    insert: Script,
    remove: Script,
    set_features: Script,
    page: Script,
    after: Script,
    position: Script,
    since: Script,
    increment: Script,
}

/// Appends a change to the feed; every write script starts with it. KEYS
/// 1–2: changes, meta. ARGV 1–3: a fresh epoch (kept only if the feed has
/// none), entries to keep, extra entries allowed before a trim.
/// Trimming is exact and in batches: the newest id trimmed is recorded, so
/// `since` knows which positions still reach back.
const APPEND: &str = r#"
local function append(tenant, id)
  redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
  redis.call('XADD', KEYS[1], '*', 'tenant', tenant, 'drawing', id)
  local keep = tonumber(ARGV[2])
  local len = redis.call('XLEN', KEYS[1])
  if len > keep + tonumber(ARGV[3]) then
    local edge = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - keep + 1)
    redis.call('XTRIM', KEYS[1], 'MINID', edge[#edge][1])
    redis.call('HSET', KEYS[2], 'trimmed', edge[#edge - 1][1])
  end
end
"#;

/// KEYS: changes, meta, drawings, thumbs, order. ARGV: feed (3), tenant,
/// id, row, order member, has thumbnail, thumbnail. Returns 1 when
/// inserted, 0 when the id exists. The same row again is this very insert,
/// resent after a dropped connection lost its reply: 1, not "exists",
/// or the caller would delete the file the row points to.
const INSERT: &str = r#"
local existing = redis.call('HGET', KEYS[3], ARGV[5])
if existing then
  if existing == ARGV[6] then return 1 end
  return 0
end
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
if ARGV[8] == '1' then redis.call('HSET', KEYS[4], ARGV[5], ARGV[9]) end
redis.call('ZADD', KEYS[5], 0, ARGV[7])
append(ARGV[4], ARGV[5])
return 1
"#;

/// KEYS: changes, meta, drawings, thumbs, order. ARGV: feed (3), tenant,
/// id. Returns the removed row, or nil.
const REMOVE: &str = r#"
local row = redis.call('HGET', KEYS[3], ARGV[5])
if not row then return false end
redis.call('HDEL', KEYS[3], ARGV[5])
redis.call('HDEL', KEYS[4], ARGV[5])
redis.call('ZREM', KEYS[5], cjson.decode(row)['order'])
append(ARGV[4], ARGV[5])
return row
"#;

/// KEYS: changes, meta, drawings, thumbs. ARGV: feed (3), tenant, id, the
/// row as read, the new row, has thumbnail, thumbnail. Returns 1 when
/// written, 0 when the row changed since it was read, -1 when it is gone.
const SET_FEATURES: &str = r#"
local row = redis.call('HGET', KEYS[3], ARGV[5])
if not row then return -1 end
if row ~= ARGV[6] then return 0 end
redis.call('HSET', KEYS[3], ARGV[5], ARGV[7])
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[9])
else
  redis.call('HDEL', KEYS[4], ARGV[5])
end
append(ARGV[4], ARGV[5])
return 1
"#;

/// KEYS: drawings, order. ARGV: first rank, last rank. Returns {total,
/// member, row, member, row, ...}, read at one instant.
const PAGE: &str = r#"
local out = {redis.call('ZCARD', KEYS[2])}
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], ARGV[1], ARGV[2])) do
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[1], string.sub(member, 18)) or false
end
return out
"#;

/// KEYS: drawings, order. ARGV: lexicographic start ('-' or '(' and the
/// last member read), count. Returns {member, row, ...}.
const AFTER: &str = r#"
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], '+', 'LIMIT', 0, ARGV[2])) do
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[1], string.sub(member, 18)) or false
end
return out
"#;

/// KEYS: changes, meta. ARGV: a fresh epoch, kept if the feed has none.
/// Returns {epoch, id of the newest entry or '0-0'}. Trims never empty the
/// stream, so its newest entry is the last id it gave out.
const POSITION: &str = r#"
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if newest[1] then return {epoch, newest[1][1]} end
return {epoch, '0-0'}
"#;

/// KEYS: changes, meta. ARGV: epoch, id, count. Returns {'gone'}, or
/// {'ok', new id, tenant, drawing, ...}. A missing or other epoch means
/// the feed (with the library) was lost since the position was taken.
const SINCE: &str = r#"
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'trimmed')
local epoch, trimmed = meta[1], meta[2]
if epoch ~= ARGV[1] then return {'gone'} end
if trimmed and older(ARGV[2], trimmed) then return {'gone'} end
local out = {'ok', ARGV[2]}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])) do
  out[2] = entry[1]
  out[#out + 1] = entry[2][2]
  out[#out + 1] = entry[2][4]
end
return out
"#;

/// KEYS: stats. ARGV: processed, rejected, dup_skipped. All at once, so a
/// reader never sees a duplicate counted before its search.
const INCREMENT: &str = r#"
for i, field in ipairs({'processed', 'rejected', 'dup_skipped'}) do
  if ARGV[i] ~= '0' then redis.call('HINCRBY', KEYS[1], field, ARGV[i]) end
end
return 1
"#;

/// A drawing as stored in `lib:{tenant}:drawings`, under its id.
#[derive(Serialize, Deserialize)]
struct Row {
    file_name: String,
    file_hash: String,
    file_ref: FileRef,
    features: Features,
    #[serde(with = "exact")]
    created_at: f64,
    /// The drawing's member of `lib:{tenant}:order`, which `REMOVE` needs.
    order: String,
}

/// `created_at` as text: serde_json may read a float back one unit in the
/// last place off, Rust's own parse never does, and the embedded store
/// keeps the exact value.
mod exact {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The order member: `created_at` as 16 hex digits that sort as the
/// numbers do (sign bit flipped, negatives inverted), then the id.
fn order_member(created_at: f64, drawing_id: &str) -> String {
    let bits = created_at.to_bits();
    let sortable = if bits >> 63 == 1 { !bits } else { bits | 1 << 63 };
    format!("{sortable:016x}:{drawing_id}")
}

/// The id in an order member (after the 16 digits and the colon).
fn member_id(member: &str) -> &str {
    member.get(17..).unwrap_or_default()
}

impl Row {
    fn of(drawing: &Drawing) -> Row {
        Row {
            file_name: drawing.file_name.clone(),
            file_hash: drawing.file_hash.clone(),
            file_ref: drawing.file_ref.clone(),
            features: drawing.features.clone(),
            created_at: drawing.created_at,
            order: order_member(drawing.created_at, &drawing.drawing_id),
        }
    }

    fn parse(text: &str) -> Result<Row, LibraryError> {
        serde_json::from_str(text)
            .map_err(|e| LibraryError::Unavailable(format!("a stored drawing does not read: {e}")))
    }

    fn text(&self) -> Result<String, LibraryError> {
        serde_json::to_string(self).map_err(|e| LibraryError::Unavailable(format!("cannot encode a drawing: {e}")))
    }

    fn into_drawing(self, tenant_id: &str, drawing_id: &str) -> Drawing {
        Drawing {
            drawing_id: drawing_id.to_string(),
            tenant_id: tenant_id.to_string(),
            file_name: self.file_name,
            file_hash: self.file_hash,
            file_ref: self.file_ref,
            features: self.features,
            created_at: self.created_at,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> LibraryError {
    LibraryError::Unavailable(format!("redis: {e}"))
}

/// A thumbnail as script arguments: a flag, and the raw bytes.
fn thumbnail_args(thumbnail: Option<&[u8]>) -> [Value; 2] {
    match thumbnail {
        Some(bytes) => ["1".into(), Value::Bytes(Bytes::copy_from_slice(bytes))],
        None => ["0".into(), "".into()],
    }
}

impl RedisLibrary {
    /// `client` is initialised already; it is shared with the caller's other
    /// Redis users (commands are pipelined, none here blocks).
    pub fn new(client: Client, keys: Keys) -> RedisLibrary {
        let write = |body: &str| Script::from_lua(format!("{APPEND}{body}"));
        RedisLibrary {
            client,
            keys,
            keep_changes: KEEP_CHANGES,
            scripts: Scripts {
                insert: write(INSERT),
                remove: write(REMOVE),
                set_features: write(SET_FEATURES),
                page: Script::from_lua(PAGE),
                after: Script::from_lua(AFTER),
                position: Script::from_lua(POSITION),
                since: Script::from_lua(SINCE),
                increment: Script::from_lua(INCREMENT),
            },
        }
    }

    /// Keeps about `keep` feed entries instead of [`KEEP_CHANGES`]: a
    /// process further behind than that reloads its indexes.
    pub fn keeping_changes(mut self, keep: u64) -> RedisLibrary {
        self.keep_changes = keep.max(1);
        self
    }

    async fn run<R: FromValue>(&self, script: &Script, keys: Vec<String>, args: Vec<Value>) -> Result<R, LibraryError> {
        script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(unavailable)
    }

    /// KEYS and ARGV every write script starts with, then the tenant's keys.
    fn write_keys(&self, tenant_id: &str, parts: &[&str]) -> Vec<String> {
        let mut keys = vec![self.keys.changes(), self.keys.changes_meta()];
        keys.extend(parts.iter().map(|part| self.keys.library(tenant_id, part)));
        keys
    }

    fn write_args(&self, tenant_id: &str, drawing_id: &str) -> Vec<Value> {
        let slack = self.keep_changes / 100 + 1;
        vec![
            new_epoch(),
            self.keep_changes.to_string().into(),
            slack.to_string().into(),
            tenant_id.into(),
            drawing_id.into(),
        ]
    }

    /// Drawings from a script's `{member, row, ...}` reply; members whose
    /// row is missing are skipped.
    fn drawings(tenant_id: &str, pairs: &[Value]) -> Result<Vec<Drawing>, LibraryError> {
        let mut drawings = Vec::with_capacity(pairs.len() / 2);
        for pair in pairs.chunks_exact(2) {
            let (Some(member), Some(row)) = (pair[0].as_str(), pair[1].as_str()) else {
                continue;
            };
            drawings.push(Row::parse(&row)?.into_drawing(tenant_id, member_id(&member)));
        }
        Ok(drawings)
    }

    async fn row(&self, tenant_id: &str, drawing_id: &str) -> Result<Option<String>, LibraryError> {
        self.client
            .hget(self.keys.library(tenant_id, "drawings"), drawing_id)
            .await
            .map_err(unavailable)
    }

    async fn rows(&self, tenant_id: &str, part: &str, drawing_ids: &[String]) -> Result<Vec<Value>, LibraryError> {
        if drawing_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.client
            .hmget(self.keys.library(tenant_id, part), drawing_ids.to_vec())
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl LibraryStore for RedisLibrary {
    async fn insert(&self, drawing: &Drawing, thumbnail: Option<&[u8]>) -> Result<(), LibraryError> {
        let (tenant_id, drawing_id) = (&drawing.tenant_id, &drawing.drawing_id);
        let row = Row::of(drawing);
        let mut args = self.write_args(tenant_id, drawing_id);
        args.extend([row.text()?.into(), row.order.clone().into()]);
        args.extend(thumbnail_args(thumbnail));
        let keys = self.write_keys(tenant_id, &["drawings", "thumbs", "order"]);
        let inserted: i64 = self.run(&self.scripts.insert, keys, args).await?;
        match inserted {
            1 => Ok(()),
            _ => Err(LibraryError::Exists(drawing_id.clone())),
        }
    }

    async fn remove(&self, tenant_id: &str, drawing_id: &str) -> Result<Option<Drawing>, LibraryError> {
        let keys = self.write_keys(tenant_id, &["drawings", "thumbs", "order"]);
        let args = self.write_args(tenant_id, drawing_id);
        let row: Option<String> = self.run(&self.scripts.remove, keys, args).await?;
        row.map(|row| Ok(Row::parse(&row)?.into_drawing(tenant_id, drawing_id)))
            .transpose()
    }

    async fn all(&self, tenant_id: &str) -> Result<Vec<Drawing>, LibraryError> {
        let keys = vec![
            self.keys.library(tenant_id, "drawings"),
            self.keys.library(tenant_id, "order"),
        ];
        let mut drawings = Vec::new();
        let mut start = "-".to_string();
        loop {
            let args = vec![start.clone().into(), ALL_BATCH.to_string().into()];
            let pairs: Vec<Value> = self.run(&self.scripts.after, keys.clone(), args).await?;
            drawings.extend(Self::drawings(tenant_id, &pairs)?);
            if pairs.len() / 2 < ALL_BATCH {
                return Ok(drawings);
            }
            // After the last member read, not after an offset: a drawing
            // removed meanwhile cannot make the next batch skip one.
            let last = pairs[pairs.len() - 2].as_string().unwrap_or_default();
            start = format!("({last}");
        }
    }

    async fn page(&self, tenant_id: &str, limit: u32, offset: u64) -> Result<(Vec<Drawing>, u64), LibraryError> {
        if limit == 0 {
            let total: u64 = self
                .client
                .zcard(self.keys.library(tenant_id, "order"))
                .await
                .map_err(unavailable)?;
            return Ok((Vec::new(), total));
        }
        let keys = vec![
            self.keys.library(tenant_id, "drawings"),
            self.keys.library(tenant_id, "order"),
        ];
        let last = offset.saturating_add(u64::from(limit) - 1).min(i64::MAX as u64);
        let args = vec![offset.min(i64::MAX as u64).to_string().into(), last.to_string().into()];
        let found: Vec<Value> = self.run(&self.scripts.page, keys, args).await?;
        let total = found.first().and_then(Value::as_u64).unwrap_or(0);
        Ok((Self::drawings(tenant_id, found.get(1..).unwrap_or_default())?, total))
    }

    async fn set_features(
        &self,
        tenant_id: &str,
        drawing_id: &str,
        features: &Features,
        thumbnail: Option<&[u8]>,
    ) -> Result<(), LibraryError> {
        let keys = self.write_keys(tenant_id, &["drawings", "thumbs"]);
        for _ in 0..SET_FEATURES_TRIES {
            let Some(read) = self.row(tenant_id, drawing_id).await? else {
                return Ok(());
            };
            let mut row = Row::parse(&read)?;
            row.features = features.clone();
            row.file_hash = features.file_hash.clone();
            let mut args = self.write_args(tenant_id, drawing_id);
            args.extend([read.into(), row.text()?.into()]);
            args.extend(thumbnail_args(thumbnail));
            let written: i64 = self.run(&self.scripts.set_features, keys.clone(), args).await?;
            if written != 0 {
                return Ok(());
            }
        }
        Err(LibraryError::Unavailable(format!(
            "drawing `{drawing_id}` kept changing while its features were set"
        )))
    }

    async fn drawing(&self, tenant_id: &str, drawing_id: &str) -> Result<Option<Drawing>, LibraryError> {
        self.row(tenant_id, drawing_id)
            .await?
            .map(|row| Ok(Row::parse(&row)?.into_drawing(tenant_id, drawing_id)))
            .transpose()
    }

    async fn thumbnails(
        &self,
        tenant_id: &str,
        drawing_ids: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, LibraryError> {
        let found = self.rows(tenant_id, "thumbs", drawing_ids).await?;
        Ok(drawing_ids
            .iter()
            .zip(found)
            .filter_map(|(id, bytes)| Some((id.clone(), bytes.into_bytes()?.to_vec())))
            .collect())
    }

    async fn tenants(&self) -> Result<Vec<String>, LibraryError> {
        let pattern = self.keys.library("*", "order");
        let (head, tail) = pattern.split_once('*').expect("the pattern has a wildcard");
        let mut tenants = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, keys): (String, Vec<String>) = self
                .client
                .scan_page(cursor, pattern.clone(), Some(1000), None)
                .await
                .map_err(unavailable)?;
            tenants.extend(
                keys.iter()
                    .filter_map(|key| key.strip_prefix(head)?.strip_suffix(tail))
                    .map(str::to_string),
            );
            if next == "0" {
                return Ok(tenants);
            }
            cursor = next;
        }
    }

    async fn details(&self, tenant_id: &str, drawing_ids: &[String]) -> Result<HashMap<String, Details>, LibraryError> {
        let found = self.rows(tenant_id, "drawings", drawing_ids).await?;
        let mut details = HashMap::with_capacity(found.len());
        for (id, row) in drawing_ids.iter().zip(found) {
            if let Some(row) = row.as_str() {
                let row = Row::parse(&row)?;
                let details_of = Details {
                    file_name: row.file_name,
                    file_hash: row.file_hash,
                    geometry_hash: row.features.geometry_hash,
                };
                details.insert(id.clone(), details_of);
            }
        }
        Ok(details)
    }
}

/// A random id for the feed, kept by whichever write or position comes
/// first after the feed was created (or lost).
fn new_epoch() -> Value {
    uuid::Uuid::new_v4().simple().to_string().into()
}

/// Positions are `{epoch} {stream id}`.
fn position(epoch: &str, id: &str) -> FeedPosition {
    FeedPosition::new(format!("{epoch} {id}"))
}

#[async_trait]
impl LibraryFeed for RedisLibrary {
    async fn position(&self) -> Result<FeedPosition, LibraryError> {
        let keys = vec![self.keys.changes(), self.keys.changes_meta()];
        let (epoch, id): (String, String) = self.run(&self.scripts.position, keys, vec![new_epoch()]).await?;
        Ok(position(&epoch, &id))
    }

    async fn since(
        &self,
        from: &FeedPosition,
        max: usize,
    ) -> Result<Option<(Vec<Change>, FeedPosition)>, LibraryError> {
        let Some((epoch, id)) = from.as_str().split_once(' ') else {
            return Ok(None);
        };
        let keys = vec![self.keys.changes(), self.keys.changes_meta()];
        let args = vec![epoch.into(), id.into(), max.max(1).to_string().into()];
        let found: Vec<Value> = self.run(&self.scripts.since, keys, args).await?;
        let text = |i: usize| found.get(i).and_then(Value::as_string).unwrap_or_default();
        if text(0) != "ok" {
            return Ok(None);
        }
        let changes = found
            .get(2..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|pair| Change {
                tenant_id: pair[0].as_string().unwrap_or_default(),
                drawing_id: pair[1].as_string().unwrap_or_default(),
            })
            .collect();
        Ok(Some((changes, position(epoch, &text(1)))))
    }
}

#[async_trait]
impl StatsStore for RedisLibrary {
    async fn increment(&self, tenant_id: &str, delta: TenantStats) -> Result<(), StatsError> {
        let args: Vec<Value> = [delta.processed, delta.rejected, delta.dup_skipped]
            .map(|n| n.to_string().into())
            .into();
        let _: i64 = self
            .run(&self.scripts.increment, vec![self.keys.stats(tenant_id)], args)
            .await
            .map_err(|e| StatsError(e.to_string()))?;
        Ok(())
    }

    async fn read(&self, tenant_id: &str) -> Result<TenantStats, StatsError> {
        let counts: Vec<Option<u64>> = self
            .client
            .hmget(self.keys.stats(tenant_id), vec!["processed", "rejected", "dup_skipped"])
            .await
            .map_err(|e| StatsError(format!("redis: {e}")))?;
        let count = |i: usize| counts.get(i).copied().flatten().unwrap_or(0);
        Ok(TenantStats {
            processed: count(0),
            rejected: count(1),
            dup_skipped: count(2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_members_sort_as_created_at_then_id() {
        let members = [
            order_member(-2.5, "a"),
            order_member(-0.5, "a"),
            order_member(0.0, "a"),
            order_member(1.0, "a"),
            order_member(1.0, "ab"),
            order_member(1.0, "b"),
            order_member(1_731_234_567.123_456, "a"),
            order_member(1e12, "a"),
        ];
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, members);
        assert_eq!(member_id(&members[4]), "ab");
    }
}
