//! The machine a run was measured on, the date, and per-phase resource use read from
//! `/proc`: CPU seconds of the server process and of this (client) process, and the data
//! disk's completed writes and flushes (`/proc/diskstats`; device-wide, so another
//! process's I/O on the same disk is counted too).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::common::round3;

/// `YYYY-MM-DDTHH:MM:SSZ` of now (UTC).
pub fn utc_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/proc/pressure/io`'s "some" line, if the kernel has PSI.
pub fn io_pressure() -> Option<String> {
    read("/proc/pressure/io")
        .lines()
        .find(|l| l.starts_with("some"))
        .map(str::to_string)
}

/// The machine: cores, CPU model, memory, kernel, and the filesystem `dir` is on.
pub fn machine(dir: &Path) -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kb = read("/proc/meminfo").lines().find_map(|l| {
        l.strip_prefix("MemTotal:")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    });
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": model,
        "mem_total_kb": mem_kb,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "data_dir": dir.display().to_string(),
        "data_filesystem": filesystem(dir),
        "data_disk": disk_name(dir),
    })
}

/// The mount (device, mount point, type, options) holding `dir`: the longest matching mount
/// point in `/proc/mounts`.
pub fn filesystem(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mounts = read("/proc/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && dir.starts_with(f[1])).then(|| (f[1].len(), l.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, l)| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
}

/// The `/proc/diskstats` name of the block device holding `dir` (matched by major:minor;
/// a partition's whole disk is not looked up).
pub fn disk_name(dir: &Path) -> Option<String> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    read("/proc/diskstats").lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[0] == major.to_string() && f[1] == minor.to_string())
            .then(|| f[2].to_string())
    })
}

/// Completed writes and flushes of a disk since boot (`/proc/diskstats` fields 8 and 19 of a
/// line, 1-based; flushes need kernel 5.5+).
fn disk_counters(disk: &str) -> Option<(u64, u64)> {
    read("/proc/diskstats").lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 || f[2] != disk {
            return None;
        }
        let writes = f.get(7)?.parse().ok()?;
        let flushes = f.get(18).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some((writes, flushes))
    })
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU ticks of a process, children it waited for not included.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = read(&format!("/proc/{pid}/stat"));
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// What a phase is measured against: the server process (if known), the data disk.
#[derive(Debug, Clone)]
pub struct Meter {
    pub disk: Option<String>,
    pub ticks_per_s: f64,
}

/// A snapshot at the start of a phase.
#[derive(Debug)]
pub struct Snapshot {
    server_pid: Option<u32>,
    server: Option<u64>,
    client: Option<u64>,
    disk: Option<(u64, u64)>,
    at: Instant,
}

impl Meter {
    pub fn begin(&self, server_pid: Option<u32>) -> Snapshot {
        Snapshot {
            server_pid,
            server: server_pid.and_then(|p| cpu_ticks(&p.to_string())),
            client: cpu_ticks("self"),
            disk: self.disk.as_deref().and_then(disk_counters),
            at: Instant::now(),
        }
    }

    /// Resource use since `s`, per message too.
    pub fn end(&self, s: &Snapshot, messages: u64) -> Value {
        let secs = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(round3(b.saturating_sub(a) as f64 / self.ticks_per_s)),
            _ => None,
        };
        let server = secs(
            s.server,
            s.server_pid.and_then(|p| cpu_ticks(&p.to_string())),
        );
        let client = secs(s.client, cpu_ticks("self"));
        let disk = match (s.disk, self.disk.as_deref().and_then(disk_counters)) {
            (Some((w0, f0)), Some((w1, f1))) => {
                Some((w1.saturating_sub(w0), f1.saturating_sub(f0)))
            }
            _ => None,
        };
        let per_msg = |x: Option<u64>| x.map(|x| round3(x as f64 / messages.max(1) as f64));
        json!({
            "wall_s": round3(s.at.elapsed().as_secs_f64()),
            "server_cpu_s": server,
            "server_pid": s.server_pid,
            "client_cpu_s": client,
            "disk_writes": disk.map(|d| d.0),
            "disk_flushes": disk.map(|d| d.1),
            "disk_flushes_per_msg": per_msg(disk.map(|d| d.1)),
        })
    }
}

/// Fsyncs measured right before a system runs, to show the state of the disk at that
/// moment (on a shared virtual disk, flush latency drifts by several times within minutes):
/// `rounds` × (append `bytes` to a fresh file in `dir` + `fdatasync`), one thread, then the
/// same overwriting a zero-filled file (what the queue's preallocated segments see: no new
/// file size to commit). Returns p50, p99 and max in µs of each, or why it could not run.
pub fn fsync_probe(dir: &Path, rounds: usize, bytes: usize) -> Value {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    let path = dir.join(format!("queue-shootout-probe-{}", std::process::id()));
    // `overwrite`: the file is zero-filled (and fsynced) first, then each round overwrites
    // the next `bytes` of it, as a writer with preallocated space does.
    let run = |overwrite: bool| -> std::io::Result<Vec<u64>> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        if overwrite {
            f.write_all(&vec![0u8; rounds * bytes])?;
            f.sync_all()?;
        }
        let buf = vec![b'p'; bytes];
        let mut lat = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let t0 = Instant::now();
            if overwrite {
                f.write_all_at(&buf, (i * bytes) as u64)?;
            } else {
                f.write_all(&buf)?;
            }
            f.sync_data()?;
            lat.push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        Ok(lat)
    };
    let append = run(false);
    let overwrite = run(true);
    let _ = std::fs::remove_file(&path);
    let quantiles = |lat: &mut Vec<u64>| {
        lat.sort_unstable();
        let at = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99), at(1.0))
    };
    match (append, overwrite) {
        (Ok(mut a), Ok(mut o)) if !a.is_empty() && !o.is_empty() => {
            let (p50, p99, max) = quantiles(&mut a);
            let (o50, o99, omax) = quantiles(&mut o);
            json!({
                "what": format!("{rounds} x (append {bytes} B + fdatasync), one thread, just before this system"),
                "p50_us": p50,
                "p99_us": p99,
                "max_us": max,
                "overwrite_what": format!("{rounds} x (overwrite {bytes} B of a zero-filled, fsynced file + fdatasync), the same thread, right after"),
                "overwrite_p50_us": o50,
                "overwrite_p99_us": o99,
                "overwrite_max_us": omax,
            })
        }
        (Ok(_), Ok(_)) => json!({ "error": "no rounds" }),
        (Err(e), _) | (_, Err(e)) => json!({ "error": e.to_string() }),
    }
}
