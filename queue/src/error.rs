//! The engine's error type.

use std::path::PathBuf;

/// Everything a queue operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A sealed segment (or a file other than the log tail) holds a record that does not
    /// check out. The queue refuses to open unless repair is asked for.
    #[error("corrupt segment {segment} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte position of the first bad record.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// The topic's backlog limit is reached; retry later (the gateway answers 503).
    #[error("topic {topic} is full: {what} backlog limit {limit} reached")]
    Full {
        /// Topic name.
        topic: String,
        /// `"messages"` or `"bytes"`.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A caller-supplied argument is not acceptable.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A named limit was reached (topics, groups).
    #[error("limit reached: {what} (max {limit})")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The topic does not exist.
    #[error("no such topic: {0}")]
    NoSuchTopic(String),
    /// No dead letter with that offset is pending.
    #[error("no pending dead letter at offset {offset} of {topic}")]
    NoSuchDeadLetter {
        /// Original topic.
        topic: String,
        /// Offset in the dead-letter topic.
        offset: u64,
    },
    /// An earlier write or fsync failed; the engine stops accepting writes, because after a
    /// failed fsync the page cache can no longer be trusted to match the disk.
    #[error("the queue stopped after a write failure: {0}")]
    Failed(String),
    /// The engine was closed (or the broker is shutting down).
    #[error("the queue is closed")]
    Closed,
    /// The connection to a broker could not be made or was lost. A request in flight may or
    /// may not have taken effect: retry a publish with the same message id (the broker's
    /// de-duplication makes the retry harmless).
    #[error("broker connection: {0}")]
    Connection(String),
    /// The request was never sent: the broker could not be reached (or no connection or
    /// in-flight slot was free) before the request's deadline. It certainly did not take
    /// effect, so a caller may treat it as a definite failure (the gateway gives a unit back).
    #[error("broker unreachable, request not sent: {0}")]
    NotSent(String),
    /// The broker refused this client's authentication (no secret, a wrong one, too many
    /// wrong attempts), or the broker could not prove it holds the client's secret. Not
    /// retried: it will not pass by itself.
    #[error("broker authentication: {0}")]
    Auth(String),
    /// The peer sent a frame that does not follow `PROTOCOL.md`.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A broker-side error with no local counterpart (I/O, corruption, a protocol error the
    /// broker saw); `code` is from `proto::code`.
    #[error("broker error {code}: {message}")]
    Remote {
        /// Error code.
        code: u16,
        /// The broker's message.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
