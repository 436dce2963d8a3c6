//! Finding Debian's PostgreSQL 15 programs, and the user to run the server as.
//!
//! The kit never downloads or builds PostgreSQL: `scripts/ensure-postgres` (called by
//! `scripts/test`) installs the Debian package, and a missing program is an error that says
//! so rather than a skipped test.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::KitError;

/// Where Debian's `postgresql-15` package puts its programs.
pub const BIN_DIR_DEFAULT: &str = "/usr/lib/postgresql/15/bin";
/// Overrides [`BIN_DIR_DEFAULT`] (another version, another layout).
pub const BIN_DIR_ENV: &str = "PG_KIT_BIN_DIR";
/// The system user the server runs as when the tests run as root (PostgreSQL refuses to run
/// as root); Debian's package creates it.
pub const RUN_AS_USER: &str = "postgres";

/// The PostgreSQL programs the kit runs.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    /// `initdb`: creates a data directory.
    pub initdb: PathBuf,
    /// `postgres`: the server (postmaster).
    pub postgres: PathBuf,
    /// `psql`: the client the kit's probes and [`crate::PgServer::psql`] use.
    pub psql: PathBuf,
    /// `pg_basebackup`: copies a running server (for a standby; unused so far).
    pub pg_basebackup: PathBuf,
}

impl PgBinaries {
    /// The programs in `$PG_KIT_BIN_DIR`, else in [`BIN_DIR_DEFAULT`]; an error names the
    /// first one missing.
    pub fn find() -> Result<PgBinaries, KitError> {
        let dir = std::env::var_os(BIN_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(BIN_DIR_DEFAULT));
        Self::in_dir(&dir)
    }

    /// The programs in `dir`.
    pub fn in_dir(dir: &Path) -> Result<PgBinaries, KitError> {
        let program = |name: &str| -> Result<PathBuf, KitError> {
            let path = dir.join(name);
            let ok = path
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if ok {
                Ok(path)
            } else {
                Err(KitError::MissingBinary {
                    path: path.display().to_string(),
                })
            }
        };
        Ok(PgBinaries {
            initdb: program("initdb")?,
            postgres: program("postgres")?,
            psql: program("psql")?,
            pg_basebackup: program("pg_basebackup")?,
        })
    }
}

/// Whom the server runs as: `None` for this process's own user, or the uid and gid of
/// [`RUN_AS_USER`] when this process is root.
pub(crate) fn run_as() -> Result<Option<(u32, u32)>, KitError> {
    // `/proc/self` is owned by the process's effective uid: no libc call needed.
    let euid = fs::metadata("/proc/self")
        .map_err(|e| KitError::io("reading /proc/self", e))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| KitError::io("reading /etc/passwd", e))?;
    user_ids(&passwd, RUN_AS_USER).map(Some).ok_or_else(|| {
        KitError::Invalid(format!(
            "running as root, and PostgreSQL refuses root, but there is no `{RUN_AS_USER}` \
             user to run it as (Debian's postgresql package creates it)"
        ))
    })
}

/// The uid and gid of `user` in an `/etc/passwd` text.
fn user_ids(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err = PgBinaries::in_dir(empty.path()).expect_err("an empty directory");
        let text = err.to_string();
        assert!(text.contains("apt-get install -y postgresql-15"), "{text}");
        assert!(text.contains("scripts/ensure-postgres"), "{text}");
        assert!(text.contains("initdb"), "{text}");
    }

    #[test]
    fn user_ids_are_read_from_passwd_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(user_ids(passwd, "postgres"), Some((101, 104)));
        assert_eq!(user_ids(passwd, "root"), Some((0, 0)));
        assert_eq!(user_ids(passwd, "nobody"), None);
        assert_eq!(user_ids("postgres:x:abc:1:::\n", "postgres"), None);
    }
}
