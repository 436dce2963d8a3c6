//! Choosing the queue by configuration: one string names a directory for the embedded
//! [`Engine`], a broker address for the [`Client`], or (feature `redis-streams`) a Redis
//! server or cluster for [`crate::streams::RedisQueue`]; callers get a `dyn Queue` either
//! way, so a gateway or worker switches between them without code changes.

use std::sync::Arc;

use crate::api::Queue;
use crate::client::{Client, ClientConfig};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Prefix of a broker address in a queue target.
pub const TCP_PREFIX: &str = "tcp://";
/// Optional prefix of a directory in a queue target.
pub const FILE_PREFIX: &str = "file:";

/// An opened queue: embedded or remote.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The engine, in this process.
    Embedded(Arc<Engine>),
    /// A broker, over TCP.
    Remote(Arc<Client>),
    /// Redis Streams, standalone or Cluster.
    #[cfg(feature = "redis-streams")]
    Redis(Arc<crate::streams::RedisQueue>),
}

impl Backend {
    /// Opens `target`: `tcp://HOST:PORT` connects to a broker (with `ClientConfig`
    /// defaults and the broker's secret from `QUEUE_SECRET` or `QUEUE_SECRET_FILE`, see
    /// [`ClientConfig::from_env`]); `redis://HOST:PORT` or `redis+cluster://HOST:PORT,...` (options after a
    /// `?`, see [`crate::streams`]) connects to Redis with `config`'s queue semantics;
    /// `file:DIR` or a plain `DIR` opens the engine there with `config`.
    pub async fn open(target: &str, config: Config) -> Result<Backend> {
        let target = target.trim();
        if target.is_empty() {
            return Err(Error::Invalid("empty queue target".into()));
        }
        #[cfg(feature = "redis-streams")]
        if let Some(redis) = crate::streams::RedisConfig::parse(target, &config) {
            let q = crate::streams::RedisQueue::connect(redis?).await?;
            return Ok(Backend::Redis(Arc::new(q)));
        }
        #[cfg(not(feature = "redis-streams"))]
        if target.starts_with("redis://") || target.starts_with("redis+cluster://") {
            return Err(Error::Invalid(
                "this build has no Redis Streams backend (cargo feature queue/redis-streams)"
                    .into(),
            ));
        }
        if let Some(addr) = target.strip_prefix(TCP_PREFIX) {
            let client = Client::connect(ClientConfig::from_env(addr)?).await?;
            return Ok(Backend::Remote(Arc::new(client)));
        }
        let dir = target.strip_prefix(FILE_PREFIX).unwrap_or(target);
        Ok(Backend::Embedded(Arc::new(Engine::open(dir, config)?)))
    }

    /// The queue, whichever it is.
    pub fn queue(&self) -> Arc<dyn Queue> {
        match self {
            Backend::Embedded(e) => e.clone(),
            Backend::Remote(c) => c.clone(),
            #[cfg(feature = "redis-streams")]
            Backend::Redis(r) => r.clone(),
        }
    }

    /// Closes an embedded engine (fsyncs and stops its threads); a client needs nothing:
    /// its connections close when it is dropped.
    pub fn close(&self) -> Result<()> {
        match self {
            Backend::Embedded(e) => e.close(),
            Backend::Remote(_) => Ok(()),
            #[cfg(feature = "redis-streams")]
            Backend::Redis(r) => r.close(),
        }
    }
}
