//! Finding Debian's `redis-server` and `redis-cli` on `PATH`.
//!
//! The kit never downloads or builds Redis: `scripts/ensure-redis` (called by
//! `scripts/test`) installs the Debian packages, and a missing binary is an error that says
//! so rather than a skipped test.

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::KitError;

/// The path of `redis-server` (it also runs Sentinel, with `--sentinel`).
pub fn redis_server_path() -> Result<PathBuf, KitError> {
    find_program("redis-server", env::var_os("PATH").as_deref())
}

/// The path of `redis-cli` (used for `redis-cli --cluster create`).
pub fn redis_cli_path() -> Result<PathBuf, KitError> {
    find_program("redis-cli", env::var_os("PATH").as_deref())
}

/// The first executable file called `name` in the directories of `path` (a `PATH` value).
pub(crate) fn find_program(name: &'static str, path: Option<&OsStr>) -> Result<PathBuf, KitError> {
    let path = path.ok_or(KitError::MissingBinary { name })?;
    env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(KitError::MissingBinary { name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err = find_program("redis-server", Some(empty.path().as_os_str()))
            .expect_err("an empty directory has no redis-server");
        let text = err.to_string();
        assert!(
            text.contains("apt-get install -y redis-server redis-tools"),
            "{text}"
        );
        assert!(text.contains("scripts/ensure-redis"), "{text}");
        assert!(matches!(
            find_program("redis-cli", None),
            Err(KitError::MissingBinary { name: "redis-cli" })
        ));
    }

    #[test]
    fn a_non_executable_file_is_not_a_program() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("redis-server");
        std::fs::write(&fake, "not a program").expect("write");
        assert!(find_program("redis-server", Some(dir.path().as_os_str())).is_err());
        let mut perms = fake.metadata().expect("metadata").permissions();
        perms.set_mode(0o755);
        std::fs::set_permissions(&fake, perms).expect("chmod");
        let found = find_program("redis-server", Some(dir.path().as_os_str())).expect("found");
        assert_eq!(found, fake);
    }
}
