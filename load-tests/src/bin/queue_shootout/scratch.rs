//! Scratch server processes: each in a fresh directory of its own, its stdout and stderr in
//! files there; stopped by its own pid (`Child::kill`) and its directory removed at the end,
//! also on error or panic (on drop).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{Res, err};

/// Lines of each output file quoted in a startup error.
const TAIL_LINES: usize = 15;

/// A fresh, empty directory `base/queue-shootout-NAME-PID-NANOS`.
pub fn fresh_dir(base: &Path, name: &str) -> Res<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = base.join(format!(
        "queue-shootout-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// A server child process and its directory.
#[derive(Debug)]
pub struct Scratch {
    name: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Scratch {
    /// Starts `cmd` with its output in `dir/NAME.stdout` and `dir/NAME.stderr`. The
    /// directory is removed when the returned value is stopped or dropped, and also if the
    /// spawn fails.
    pub fn spawn(name: &str, dir: PathBuf, mut cmd: Command) -> Res<Scratch> {
        let mut s = Scratch {
            name: name.to_string(),
            dir,
            child: None,
        };
        let out = File::create(s.out_path("stdout"))?;
        let errf = File::create(s.out_path("stderr"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(errf)
            .spawn()
            .map_err(|e| err(format!("cannot start {name} ({cmd:?}): {e}")))?;
        s.child = Some(child);
        Ok(s)
    }

    fn out_path(&self, which: &str) -> PathBuf {
        self.dir.join(format!("{}.{which}", self.name))
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.out_path("stdout")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// The last lines of its stdout and stderr, for an error message.
    pub fn tail(&self) -> String {
        ["stdout", "stderr"]
            .iter()
            .map(|w| {
                let text = std::fs::read_to_string(self.out_path(w)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
                format!("--- {} {w}:\n{tail}", self.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the process (by its pid, through `Child::kill`), reaps it and removes its
    /// directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.stop();
    }
}
