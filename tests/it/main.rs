//! Integration tests: real HTTP on loopback against `serve` in-process or the
//! built binary. One test binary; shared support in `support/`.

mod api;
mod callbacks;
mod distributed;
mod errors;
mod gc;
mod import;
mod jobs;
mod library_redis;
mod metrics;
mod payloads;
mod process;
mod queue;
mod storage;
mod support;
mod tenants;
mod vision;
