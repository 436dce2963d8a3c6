//! The crate's one error type.

use std::io;

/// Everything that can go wrong while starting, talking to or taking down a test server.
///
/// Every message is meant to be read in a failed test's output: it names the server (by
/// port), what was awaited and what was last seen, and a start-up failure carries the tail
/// of the server's own log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    /// A PostgreSQL program (`initdb`, `postgres`, `psql`) is not in the binaries' directory.
    #[error(
        "`{path}` was not found; install Debian's PostgreSQL 15: \
         `apt-get install -y postgresql-15` (scripts/ensure-postgres does it), or point \
         {env} at another PostgreSQL bin directory",
        env = crate::binaries::BIN_DIR_ENV
    )]
    MissingBinary {
        /// The program looked for.
        path: String,
    },

    /// An operating-system call failed (spawn, file, chown).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "creating a temporary directory".
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The server did not come up.
    #[error("postgres on port {port} did not start: {reason}\n--- end of its log ---\n{log_tail}")]
    Start {
        /// The port it was given.
        port: u16,
        /// Why we gave up (exited with a status, timed out, another server on the port).
        reason: String,
        /// The last lines of its log.
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

    /// A helper program (`initdb`, `psql`, `kill`) failed.
    #[error("{program} failed ({status}); its output:\n{output}")]
    Command {
        /// The command line.
        program: String,
        /// Its exit status, or "timed out".
        status: String,
        /// Its combined stdout and stderr.
        output: String,
    },

    /// The caller asked for something this kit cannot do (a bad name, a config line with
    /// a line break), or the machine lacks what it needs (no `postgres` user to run as).
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
