//! Secrets given to a binary: as a flag, an environment variable (clap reads both into the
//! same value) or a file ([`resolve`]), so that none has to appear on a command line,
//! where `ps` shows it to every user of the host; and the rules `--production` adds
//! ([`check_production`]).

use std::path::Path;

/// Shortest admin or load-test secret accepted under `--production`, bytes.
pub const PRODUCTION_SECRET_BYTES_MIN: usize = 16;
/// Largest secret file read, bytes (a secret is short; anything bigger is a wrong path).
pub const SECRET_FILE_BYTES_MAX: u64 = 4096;

/// A secret that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretError {
    /// Both the value (flag or variable) and the file were given.
    #[error("--{flag} and --{flag}-file are exclusive: give the secret one way")]
    Both {
        /// The flag, without `--`.
        flag: String,
    },
    /// The file could not be read.
    #[error("--{flag}-file {path}: {reason}")]
    File {
        /// The flag, without `--`.
        flag: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The secret is empty.
    #[error("--{flag}: the secret is empty")]
    Empty {
        /// The flag, without `--`.
        flag: String,
    },
    /// Too short for `--production`.
    #[error(
        "--{flag}: under --production a secret has at least {PRODUCTION_SECRET_BYTES_MIN} bytes (it has {len})"
    )]
    TooShort {
        /// The flag, without `--`.
        flag: String,
        /// Its length, bytes.
        len: usize,
    },
    /// Not allowed at all under `--production`.
    #[error("--{flag} (or its variable or file) is refused under --production")]
    Refused {
        /// The flag, without `--`.
        flag: String,
    },
}

/// The secret of flag `--{flag}`: its `value` (from the flag or its variable) or the
/// content of its `--{flag}-file` (trailing line ends trimmed), never both; `None` when
/// neither is given. An empty secret is refused.
pub fn resolve(
    flag: &str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, SecretError> {
    let secret = match (value, file) {
        (Some(_), Some(_)) => return Err(SecretError::Both { flag: flag.into() }),
        (None, None) => return Ok(None),
        (Some(v), None) => v.to_string(),
        (None, Some(path)) => read_file(flag, path)?,
    };
    if secret.is_empty() {
        return Err(SecretError::Empty { flag: flag.into() });
    }
    Ok(Some(secret))
}

fn read_file(flag: &str, path: &Path) -> Result<String, SecretError> {
    let fail = |reason: String| SecretError::File {
        flag: flag.into(),
        path: path.display().to_string(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if len > SECRET_FILE_BYTES_MAX {
        return Err(fail(format!(
            "{len} bytes; a secret file has at most {SECRET_FILE_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Under `--production`: the admin secret has at least [`PRODUCTION_SECRET_BYTES_MIN`]
/// bytes, and there is no load-test secret at all (load-test mode skips the captcha).
pub fn check_production(
    admin_secret: &str,
    load_test_secret: Option<&str>,
) -> Result<(), SecretError> {
    if load_test_secret.is_some() {
        return Err(SecretError::Refused {
            flag: "load-test-secret".into(),
        });
    }
    long_enough("admin-secret", admin_secret)
}

/// `secret` (of `--{flag}`) has at least [`PRODUCTION_SECRET_BYTES_MIN`] bytes.
pub fn long_enough(flag: &str, secret: &str) -> Result<(), SecretError> {
    if secret.len() < PRODUCTION_SECRET_BYTES_MIN {
        return Err(SecretError::TooShort {
            flag: flag.into(),
            len: secret.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), content).expect("write");
        f
    }

    #[test]
    fn a_secret_comes_from_the_value_or_the_file_never_both() {
        assert_eq!(resolve("admin-secret", None, None), Ok(None));
        assert_eq!(
            resolve("admin-secret", Some("s3cret"), None),
            Ok(Some("s3cret".into()))
        );
        let f = file("from-a-file\n");
        assert_eq!(
            resolve("admin-secret", None, Some(f.path())),
            Ok(Some("from-a-file".into()))
        );
        let err = resolve("admin-secret", Some("s3cret"), Some(f.path())).expect_err("both");
        assert_eq!(
            err,
            SecretError::Both {
                flag: "admin-secret".into()
            }
        );
        assert!(err.to_string().contains("--admin-secret-file"), "{err}");
    }

    #[test]
    fn a_files_trailing_line_ends_are_trimmed_and_nothing_else() {
        for (content, want) in [
            ("abc\n", "abc"),
            ("abc\r\n", "abc"),
            ("abc\n\n", "abc"),
            ("abc", "abc"),
            (" abc \n", " abc "),
            ("a\nb\n", "a\nb"),
        ] {
            let f = file(content);
            assert_eq!(
                resolve("secret", None, Some(f.path())),
                Ok(Some(want.into())),
                "{content:?}"
            );
        }
    }

    #[test]
    fn empty_missing_and_huge_files_are_refused() {
        let f = file("\n");
        assert_eq!(
            resolve("secret", None, Some(f.path())),
            Err(SecretError::Empty {
                flag: "secret".into()
            })
        );
        assert_eq!(
            resolve("secret", Some(""), None),
            Err(SecretError::Empty {
                flag: "secret".into()
            })
        );
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("nope");
        let err = resolve("secret", None, Some(&missing)).expect_err("missing");
        assert!(matches!(err, SecretError::File { .. }), "{err}");
        assert!(err.to_string().contains("--secret-file"), "{err}");
        let big = file(&"x".repeat(SECRET_FILE_BYTES_MAX as usize + 1));
        assert!(matches!(
            resolve("secret", None, Some(big.path())),
            Err(SecretError::File { .. })
        ));
    }

    #[test]
    fn production_wants_long_admin_secrets_and_no_load_test_secret() {
        let long = "0123456789abcdef";
        assert_eq!(check_production(long, None), Ok(()));
        let err = check_production("short", None).expect_err("short");
        assert_eq!(
            err,
            SecretError::TooShort {
                flag: "admin-secret".into(),
                len: 5
            }
        );
        assert!(err.to_string().contains("--admin-secret"), "{err}");
        let err = check_production(long, Some("0123456789abcdef0123")).expect_err("load test");
        assert!(err.to_string().contains("--load-test-secret"), "{err}");
        assert!(long_enough("load-test-secret", &long[..15]).is_err());
    }
}
