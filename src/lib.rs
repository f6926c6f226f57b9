//! dedup2d finds duplicate and near-duplicate 2D drawings in each tenant's
//! library. See ARCHITECTURE.md for the map; in short:
//!
//! - [`cli`] parses the command line and dispatches to a command's `run`
//!   ([`serve`], [`work`], …);
//! - [`config`] resolves defaults < file < env < flags;
//! - [`api`] is the only module that knows HTTP;
//! - [`engine`] is pure matching: bytes in, features and scores out;
//! - [`jobs`], [`library`] and [`stats`] define the storage seams, which
//!   [`embedded`] implements on SQLite; [`store`] owns file paths;
//! - [`queue`] implements the seams on Redis for the distributed mode;
//! - [`runner`] runs async jobs, in `serve` (embedded) or [`work`] (Redis);
//!   [`search`] is one search;
//! - [`calibrate`] measures how well the L2 hashes separate duplicates;
//! - [`import`] bulk-adds a folder to a library through the API;
//! - [`gc`] removes uploads no live job needs, [`migrate`] moves queued
//!   inline payloads to stored files;
//! - [`callback`] delivers signed webhooks when jobs end; [`vision`] calls
//!   the original's external vision service when it is the engine.

pub mod api;
pub mod app;
pub mod calibrate;
pub mod callback;
pub mod cli;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod gc;
pub mod import;
pub mod jobs;
pub mod library;
pub mod migrate;
pub mod outbound;
pub mod queue;
pub mod runner;
pub mod search;
pub mod serve;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod vision;
pub mod work;
