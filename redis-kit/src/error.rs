//! The crate's one error type.

use std::io;

/// Everything that can go wrong while starting, talking to or taking down test servers.
///
/// Every message is meant to be read in a failed test's output: it names the server (by
/// port), what was awaited and what was last seen, and a start-up failure carries the tail
/// of the server's own log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    /// `redis-server` or `redis-cli` is not on `PATH`.
    #[error(
        "`{name}` was not found on PATH; install Debian's redis-server package: \
         `apt-get install -y redis-server redis-tools` (scripts/ensure-redis does it)"
    )]
    MissingBinary {
        /// The program looked for.
        name: &'static str,
    },

    /// An operating-system call failed (spawn, file, socket).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "connecting to 127.0.0.1:40123".
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A server (or Sentinel) did not come up.
    #[error(
        "redis-server on port {port} did not start: {reason}\n--- end of its log ---\n{log_tail}"
    )]
    Start {
        /// The port it was given.
        port: u16,
        /// Why we gave up (exited with a status, timed out, another process on the port).
        reason: String,
        /// The last lines of its log file and of its stdout/stderr.
        log_tail: String,
    },

    /// A bounded wait for a condition ran out.
    #[error("timed out after {waited_ms} ms waiting for {what}; last seen: {last}")]
    Timeout {
        /// The condition awaited.
        what: String,
        /// How long we waited.
        waited_ms: u128,
        /// The last observation that did not satisfy it.
        last: String,
    },

    /// The server answered a command with an error reply (`-ERR …`).
    #[error("redis error reply: {0}")]
    Reply(String),

    /// The bytes on the wire were not valid RESP, or a reply had an unexpected shape.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A helper program (`redis-cli --cluster create`) failed.
    #[error("{program} failed ({status}); its output:\n{output}")]
    Command {
        /// The command line.
        program: String,
        /// Its exit status, or "timed out".
        status: String,
        /// Its combined stdout and stderr.
        output: String,
    },

    /// The caller asked for something this kit cannot do (a bad option, an index out of
    /// range, a failover wait with no node killed).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl KitError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        KitError::Io {
            what: what.into(),
            source,
        }
    }
}
