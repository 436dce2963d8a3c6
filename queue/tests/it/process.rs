//! Process tests: the real `queue` binary, broker (`queue serve`) and client subcommands
//! (`consume`, `stats`), run as child processes on temporary directories and on ports the
//! OS picks (the broker prints the address it bound), killed with SIGKILL or stopped with
//! SIGTERM.
//!
//! - [`consumers_in_one_group_get_disjoint_messages`]: two `queue consume` processes in one
//!   group share the messages: disjoint, together all of them, each once.
//! - [`killed_consumer_leases_are_redelivered_after_expiry`]: a consumer killed with SIGKILL
//!   while it holds leases; another consumer gets exactly those messages, attempt 2, once
//!   (and only once) the leases have ended.
//! - [`killed_consumers_waiting_fetch_leases_nothing`]: a consumer killed while it waits in
//!   a long poll must not be leased messages published after its death (the broker ends a
//!   closed connection's fetch).
//! - [`broker_killed_under_load_loses_no_confirmed_publish`]: the broker is killed with
//!   SIGKILL while several producers publish; it is restarted on the same directory (on a
//!   new port: the producers move to a new client); producers retry every unconfirmed id
//!   until it is confirmed; every confirmed id is then stored exactly once, at its confirmed
//!   offset, and a consumer reads each exactly once. Knobs:
//!   `QUEUE_BROKER_CRASH_ITERATIONS` (kills, default 3) and `QUEUE_BROKER_CRASH_SEED` (the
//!   kill points, printed; the timing of the processes themselves cannot be replayed).
//! - [`sigterm_stops_cleanly_and_keeps_confirmed_publishes`]: SIGTERM while publishes and a
//!   long-poll fetch are in flight: exit status 0, `queue: stopped cleanly`, and every
//!   confirmed publish is there after a restart.
//! - [`failed_fsync_stops_the_broker_with_a_failing_exit`]: the broker's test-only fail
//!   point (`QUEUE_FAIL_POINT=fsync-after:N`) fails an fsync: `/readyz` was 200, the
//!   publish hit fails with `Error::Failed`, `/readyz` is never 200 again, a long poll in
//!   flight ends, the broker exits non-zero naming the failure, and a restart has every
//!   confirmed publish.
//!
//! Nothing here sleeps in place of synchronisation: the tests wait for a line on a pipe, a
//! figure in the stats or the metrics, an exit, or a fetch's own long poll, each with a
//! deadline. Every child is killed and reaped when its guard is dropped, panics included.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue::auth::{SECRET_ENV, SECRET_FILE_ENV};
use queue::{
    Client, ClientConfig, Clock, Confirm, Error, FetchOptions, Message, Queue, Secret, StartAt,
    SystemClock, TopicStats,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const QUEUE_BIN: &str = env!("CARGO_BIN_EXE_queue");
const TOPIC: &str = "orders";
const GROUP: &str = "workers";
/// Longest wait for any one thing a test waits for: far above what it takes normally, so
/// that only a hang fails on it.
const WAIT: Duration = Duration::from_secs(30);

const ITERATIONS_ENV: &str = "QUEUE_BROKER_CRASH_ITERATIONS";
const SEED_ENV: &str = "QUEUE_BROKER_CRASH_SEED";
const ITERATIONS_DEFAULT: u64 = 3;

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

fn payload_for(id: u128) -> String {
    format!("message {id}")
}

fn message_for(id: u128) -> Message {
    Message::new(payload_for(id).into_bytes()).with_id(id)
}

// ----------------------------------------------------------------------------------------
// Child processes.

/// A child process of the `queue` binary. Its stdout is read line by line by a thread (into
/// a channel the test awaits with a deadline); its stderr is kept for failure messages.
/// Dropping it kills (SIGKILL) and reaps the process.
struct Proc {
    what: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    reaped: bool,
}

impl Proc {
    /// [`Proc::spawn_env`] with UTF-8 environment values.
    fn spawn_with_env(what: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let env: Vec<(&str, &OsStr)> = env.iter().map(|&(k, v)| (k, OsStr::new(v))).collect();
        Proc::spawn_env(what, args, &env)
    }

    /// Starts the binary with `env` set on top of a cleaned environment.
    fn spawn_env(what: &str, args: &[&str], env: &[(&str, &OsStr)]) -> Proc {
        let mut child = Command::new(QUEUE_BIN)
            .args(args)
            // The binary reads these; the test's own environment must not change its runs.
            .env_remove("QUEUE_BROKER")
            .env_remove("QUEUE_DATA")
            .env_remove("QUEUE_LISTEN")
            .env_remove("QUEUE_METRICS")
            .env_remove("QUEUE_FAIL_POINT")
            .env_remove(SECRET_ENV)
            .env_remove(SECRET_FILE_ENV)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({QUEUE_BIN}): {e}"));
        let stdout = child.stdout.take().expect("child stdout");
        let stderr_pipe = child.stderr.take().expect("child stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // A line cut short by a kill has no newline: it was never a whole line.
                let Some(line) = buf.strip_suffix(b"\n") else {
                    break;
                };
                if tx.send(String::from_utf8_lossy(line).into_owned()).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr_pipe);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf));
                }
                buf.clear();
            }
        });
        Proc {
            what: what.to_string(),
            child,
            lines,
            stderr,
            stderr_thread: Some(stderr_thread),
            reaped: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// All of stderr, once the process has exited (waits for the pipe's reader to finish).
    fn stderr_after_exit(&mut self) -> String {
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        self.stderr()
    }

    /// The next line of stdout; `None` once stdout is closed (the process exited).
    async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(line) => line,
            Err(_) => panic!(
                "{}: no line on stdout before the deadline; stderr: {:?}",
                self.what,
                self.stderr()
            ),
        }
    }

    /// The next `n` lines of stdout; fails if stdout closes first.
    async fn lines(&mut self, n: usize, deadline: Instant) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_line(deadline).await {
                Some(l) => out.push(l),
                None => panic!(
                    "{}: stdout closed after {} of {n} lines: {out:?}; stderr: {:?}",
                    self.what,
                    out.len(),
                    self.stderr()
                ),
            }
        }
        out
    }

    /// Every line until stdout closes.
    async fn rest(&mut self, deadline: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = self.next_line(deadline).await {
            out.push(l);
        }
        out
    }

    /// Waits for the process to exit and reaps it.
    async fn wait_exit(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return status;
                }
                Ok(None) => {}
                Err(e) => panic!("{}: wait failed: {e}", self.what),
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit before the deadline; stderr: {:?}",
                self.what,
                self.stderr()
            );
            // The exit itself is the condition: std offers no way to await it, so poll it.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills the process with SIGKILL (no handler, destructor or flush runs in it) and reaps
    /// it; returns its status, which must say it was killed.
    async fn sigkill(&mut self, deadline: Instant) -> ExitStatus {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("{}: SIGKILL failed: {e}", self.what));
        let status = self.wait_exit(deadline).await;
        assert_eq!(
            status.signal(),
            Some(9),
            "{} exited by itself ({status}) before the SIGKILL; stderr: {:?}",
            self.what,
            self.stderr()
        );
        status
    }

    /// Sends SIGTERM (with kill(1): this crate forbids the unsafe code a libc call needs).
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -TERM {}: {status}", self.pid());
    }

    /// Waits for a successful exit and returns the rest of stdout.
    async fn finish(&mut self, deadline: Instant) -> Vec<String> {
        let lines = self.rest(deadline).await;
        let status = self.wait_exit(deadline).await;
        assert!(
            status.success(),
            "{} failed ({status}); stdout {lines:?}; stderr: {:?}",
            self.what,
            self.stderr()
        );
        lines
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A broker process (`queue serve`) on port 0 and the address it printed. It runs with a
/// secret (`--secret-file`), as a deployed broker does; the clients and CLI runs of these
/// tests prove it.
struct Broker {
    proc: Proc,
    addr: String,
    metrics_addr: Option<String>,
    /// Holds the secret file.
    secret_dir: tempfile::TempDir,
}

/// The secret of the process tests' brokers.
const SECRET: &str = "process-test-secret-0123456789";

impl Broker {
    /// Starts a broker on `data` and waits for its `listening on` line.
    async fn start(data: &Path, extra: &[&str]) -> Broker {
        Broker::start_with_env(data, extra, &[]).await
    }

    /// [`Broker::start`] with environment variables set for the broker.
    async fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let data = data.to_str().expect("temporary directory path is UTF-8");
        let secret_dir = tempfile::tempdir().expect("tempdir");
        let secret_file = secret_dir.path().join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write the secret");
        let secret_file = secret_file.to_str().expect("UTF-8 path").to_string();
        let mut args = vec![
            "serve",
            "--data",
            data,
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            &secret_file,
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn_with_env("broker", &args, env);
        let deadline = Instant::now() + WAIT;
        let mut metrics_addr = None;
        loop {
            let Some(line) = proc.next_line(deadline).await else {
                let status = proc.wait_exit(deadline).await;
                panic!(
                    "the broker exited ({status}) before listening; stderr: {:?}",
                    proc.stderr()
                );
            };
            if let Some(rest) = line.strip_prefix("queue: metrics on http://") {
                metrics_addr = Some(rest.trim_end_matches("/metrics").to_string());
            } else if let Some(rest) = line.strip_prefix("queue: listening on ") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                assert!(!addr.is_empty(), "no address in {line:?}");
                return Broker {
                    addr: addr.to_string(),
                    proc,
                    metrics_addr,
                    secret_dir,
                };
            }
        }
    }

    async fn client(&self) -> Client {
        let secret = Secret::new(SECRET.as_bytes().to_vec()).expect("secret");
        Client::connect(ClientConfig::new(self.addr.clone()).with_secret(Some(secret)))
            .await
            .unwrap_or_else(|e| panic!("connect to the broker at {}: {e}", self.addr))
    }

    /// Starts `queue --broker ADDR ARGS...`.
    fn cli(&self, what: &str, args: &[&str]) -> Proc {
        let mut all = vec!["--broker", self.addr.as_str()];
        all.extend_from_slice(args);
        let secret_file = self.secret_dir.path().join("secret");
        Proc::spawn_env(what, &all, &[(SECRET_FILE_ENV, secret_file.as_os_str())])
    }

    /// `queue stats --json TOPIC`, run as a process.
    async fn cli_stats(&self, topic: &str, deadline: Instant) -> TopicStats {
        let mut p = self.cli("queue stats", &["stats", "--json", topic]);
        let lines = p.finish(deadline).await;
        let [line] = lines.as_slice() else {
            panic!("queue stats printed {lines:?}");
        };
        let mut all: Vec<TopicStats> = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("queue stats --json printed {line:?}: {e}"));
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    /// The broker's count of fetch requests, from its metrics endpoint.
    async fn fetches_received(&self) -> u64 {
        let body = scrape(self).await;
        body.lines()
            .find_map(|l| l.strip_prefix("queue_broker_requests_total{op=\"fetch\"} "))
            .map_or(0, |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("fetch count {v:?}: {e}"))
            })
    }
}

fn group_stats<'a>(s: &'a TopicStats, name: &str) -> &'a queue::GroupStats {
    s.groups
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no group {name} in {s:?}"))
}

/// One delivery as `queue consume` prints it.
#[derive(Debug, serde::Deserialize)]
struct Printed {
    offset: u64,
    attempt: u32,
    id: Option<String>,
    lease_until_ms: u64,
    payload: Option<String>,
}

impl Printed {
    fn parse(what: &str, line: &str) -> Printed {
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{what} printed {line:?}, not a delivery: {e}"))
    }

    fn id(&self) -> u128 {
        let id = self
            .id
            .as_deref()
            .unwrap_or_else(|| panic!("delivery without its id: {self:?}"));
        id.parse()
            .unwrap_or_else(|e| panic!("id {id:?} of {self:?}: {e}"))
    }

    /// Checks the id and payload against what was published at this offset.
    fn check(&self, published: &BTreeMap<u64, u128>) {
        let id = published
            .get(&self.offset)
            .unwrap_or_else(|| panic!("delivery of an offset never published: {self:?}"));
        assert_eq!(self.id(), *id, "{self:?}");
        assert_eq!(
            self.payload.as_deref(),
            Some(payload_for(*id).as_str()),
            "{self:?}"
        );
    }
}

/// Publishes `ids` in batches of `batch`; returns offset → id.
async fn publish_ids(
    client: &Client,
    ids: impl IntoIterator<Item = u128>,
    batch: usize,
) -> BTreeMap<u64, u128> {
    let ids: Vec<u128> = ids.into_iter().collect();
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(batch) {
        let msgs = chunk.iter().copied().map(message_for).collect();
        let confirms = client.publish_batch(TOPIC, msgs).await.expect("publish");
        assert_eq!(confirms.len(), chunk.len());
        for (c, id) in confirms.iter().zip(chunk) {
            assert!(!c.duplicate, "fresh id {id} confirmed as a duplicate");
            assert!(out.insert(c.offset, *id).is_none(), "offset {c:?} twice");
        }
    }
    out
}

/// Every message stored in `topic` below its `next_offset` (read with `peek`), offset → id.
async fn stored(client: &Client, topic: &str) -> BTreeMap<u64, Option<u128>> {
    let end = client.stats(topic).await.expect("stats").next_offset;
    let mut out = BTreeMap::new();
    let mut from = 0;
    while from < end {
        let page = client.peek(topic, from, 1000).await.expect("peek");
        let Some(last) = page.last() else { break };
        from = last.offset + 1;
        for m in page {
            if m.offset < end {
                assert_eq!(
                    m.payload.as_ref(),
                    m.id.map(payload_for).unwrap_or_default().as_bytes(),
                    "{m:?}"
                );
                out.insert(m.offset, m.id);
            }
        }
    }
    out
}

/// Inverts [`stored`]: id → offset, failing if an id is stored twice or without an id.
fn by_id(stored: &BTreeMap<u64, Option<u128>>) -> HashMap<u128, u64> {
    let mut out = HashMap::with_capacity(stored.len());
    for (off, id) in stored {
        let id = id.unwrap_or_else(|| panic!("offset {off} stored without its id"));
        if let Some(first) = out.insert(id, *off) {
            panic!("id {id} stored twice: at offsets {first} and {off}");
        }
    }
    out
}

// ----------------------------------------------------------------------------------------
// 1. Two consumer processes, one group.

/// Two `queue consume` processes in one group, started before anything is published and
/// both waiting in a fetch when the messages arrive, share them: the offsets they print are
/// disjoint and together all of them, each delivered once (they ack, so nothing comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_in_one_group_get_disjoint_messages() {
    const N: u128 = 200;
    // A consumer exits after a fetch that waited this long for nothing; long enough for the
    // other process to start and for the messages to be published.
    const IDLE_EXIT_MS: &str = "2000";
    let dir = tempfile::tempdir().expect("temp dir");
    let deadline = Instant::now() + WAIT;
    let broker = Broker::start(dir.path(), &["--metrics", "127.0.0.1:0"]).await;
    let client = broker.client().await;
    client
        .create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("create group");

    let args = [
        "consume",
        TOPIC,
        GROUP,
        "--batch",
        "5",
        "--idle-exit-ms",
        IDLE_EXIT_MS,
    ];
    let mut a = broker.cli("consumer A", &args);
    let mut b = broker.cli("consumer B", &args);
    // Publish only once both wait in a fetch (nobody else fetches), so that both take part
    // rather than the first one up draining everything.
    while broker.fetches_received().await < 2 {
        assert!(
            Instant::now() < deadline,
            "the consumers never fetched; A: {:?}, B: {:?}",
            a.stderr(),
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Batches of 10, one after the other: a stream the two consumers compete for.
    let published = publish_ids(&client, 1_000..1_000 + N, 10).await;

    let (lines_a, lines_b) = tokio::join!(a.finish(deadline), b.finish(deadline));
    let got_a: Vec<Printed> = lines_a
        .iter()
        .map(|l| Printed::parse("consumer A", l))
        .collect();
    let got_b: Vec<Printed> = lines_b
        .iter()
        .map(|l| Printed::parse("consumer B", l))
        .collect();
    let offsets = |got: &[Printed]| -> BTreeSet<u64> {
        let set: BTreeSet<u64> = got.iter().map(|d| d.offset).collect();
        assert_eq!(set.len(), got.len(), "an offset delivered twice: {got:?}");
        set
    };
    let (set_a, set_b) = (offsets(&got_a), offsets(&got_b));
    for d in got_a.iter().chain(&got_b) {
        d.check(&published);
        assert_eq!(d.attempt, 1, "acked messages came back: {d:?}");
    }
    let both: Vec<_> = set_a.intersection(&set_b).collect();
    assert!(
        both.is_empty(),
        "offsets delivered to both consumers: {both:?}"
    );
    let all: BTreeSet<u64> = set_a.union(&set_b).copied().collect();
    let expected: BTreeSet<u64> = published.keys().copied().collect();
    assert_eq!(
        all, expected,
        "the consumers together did not get every message"
    );
    assert!(
        !set_a.is_empty() && !set_b.is_empty(),
        "one consumer got everything (A {}, B {}): the test shows nothing about sharing",
        set_a.len(),
        set_b.len()
    );

    let s = broker.cli_stats(TOPIC, deadline).await;
    let g = group_stats(&s, GROUP);
    assert_eq!(
        (g.acked, g.in_flight, g.lag, g.redeliveries),
        (N as u64, 0, 0, 0),
        "{g:?}"
    );
    println!(
        "two consumers: A got {}, B got {} of {N}",
        set_a.len(),
        set_b.len()
    );
}

// ----------------------------------------------------------------------------------------
// 2. A consumer killed while holding leases.

/// A consumer that fetched 20 messages without acking is killed with SIGKILL while it waits
/// in its next fetch. Nothing is redelivered while its leases last; once they end, another
/// consumer process gets exactly those 20 offsets, each with attempt 2, and acks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumer_leases_are_redelivered_after_expiry() {
    const N: usize = 20;
    // Longer than the 1 s long poll `queue consume` waits in when it is killed: the broker
    // keeps serving a dead connection's fetch (see
    // `killed_consumers_waiting_fetch_leases_nothing`), and a poll still waiting when the
    // leases end would take the redeliveries itself (attempt 2, lost), so B would see
    // attempt 3 a lease later.
    const LEASE_A_MS: u64 = 2_000;
    const LEASE_B_MS: u64 = 5_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let deadline = Instant::now() + WAIT;
    let broker = Broker::start(dir.path(), &[]).await;
    let client = broker.client().await;
    let published = publish_ids(&client, (0..N as u128).map(|i| 500 + i), N).await;

    // No --count: after printing its batch the consumer waits in another fetch (for up to
    // 1 s, under the lease), which is where the kill finds it.
    let lease_a = LEASE_A_MS.to_string();
    let batch = N.to_string();
    let mut a = broker.cli(
        "consumer A",
        &[
            "consume",
            TOPIC,
            GROUP,
            "--batch",
            &batch,
            "--lease-ms",
            &lease_a,
            "--no-ack",
        ],
    );
    let held: Vec<Printed> = a
        .lines(N, deadline)
        .await
        .iter()
        .map(|l| Printed::parse("consumer A", l))
        .collect();
    a.sigkill(deadline).await;
    let killed_ms = now_ms();
    let after_kill = a.rest(deadline).await;
    assert!(after_kill.is_empty(), "A printed more: {after_kill:?}");
    for d in &held {
        d.check(&published);
        assert_eq!(d.attempt, 1, "{d:?}");
    }
    let held_offsets: BTreeSet<u64> = held.iter().map(|d| d.offset).collect();
    assert_eq!(
        held_offsets.len(),
        N,
        "A's deliveries repeat an offset: {held:?}"
    );
    let lease_end: HashMap<u64, u64> = held.iter().map(|d| (d.offset, d.lease_until_ms)).collect();
    let first_lease_end = lease_end.values().copied().min().unwrap_or_default();

    // While A's leases last, the group has nothing to give.
    let early = client
        .fetch(
            TOPIC,
            GROUP,
            FetchOptions {
                max_messages: N,
                lease_ms: Some(LEASE_B_MS),
                wait_ms: 0,
            },
        )
        .await
        .expect("fetch");
    let early_ms = now_ms();
    assert!(
        early.is_empty(),
        "redelivered while A's leases still ran (killed at {killed_ms}, fetched by {early_ms}, \
         first lease ends {first_lease_end}): {early:?}"
    );
    assert!(
        early_ms < first_lease_end,
        "the machine is too slow for this test: the check above came after the leases ended"
    );

    // B waits in its fetch (up to 5 s) until the leases end; --count makes it stop after the
    // 20 redeliveries.
    let lease_b = LEASE_B_MS.to_string();
    let mut b = broker.cli(
        "consumer B",
        &[
            "consume",
            TOPIC,
            GROUP,
            "--batch",
            &batch,
            "--count",
            &batch,
            "--lease-ms",
            &lease_b,
            "--idle-exit-ms",
            "5000",
        ],
    );
    let again: Vec<Printed> = b
        .finish(deadline)
        .await
        .iter()
        .map(|l| Printed::parse("consumer B", l))
        .collect();
    let again_offsets: BTreeSet<u64> = again.iter().map(|d| d.offset).collect();
    assert_eq!(again.len(), N, "B got {again:?}");
    assert_eq!(
        again_offsets, held_offsets,
        "B did not get exactly what A held"
    );
    for d in &again {
        d.check(&published);
        assert_eq!(d.attempt, 2, "{d:?}");
        // The broker leased it to B at `lease_until_ms - LEASE_B_MS` on its clock: not
        // before A's lease ended.
        let a_until = lease_end[&d.offset];
        assert!(
            d.lease_until_ms - LEASE_B_MS >= a_until,
            "offset {} redelivered at {} before A's lease ended at {a_until}",
            d.offset,
            d.lease_until_ms - LEASE_B_MS
        );
    }

    let s = broker.cli_stats(TOPIC, deadline).await;
    let g = group_stats(&s, GROUP);
    assert_eq!(
        (g.acked, g.in_flight, g.lag, g.redeliveries, g.dead_lettered),
        (N as u64, 0, 0, N as u64, 0),
        "{g:?}"
    );
}

/// A consumer killed with SIGKILL while it waits in a long-poll fetch must not take
/// messages published afterwards: nobody can receive them. The broker should notice the
/// closed connection and end that fetch; otherwise the next message is leased to the dead
/// connection (attempt 1 used up, invisible for a whole lease) while a live consumer waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumers_waiting_fetch_leases_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deadline = Instant::now() + WAIT;
    let broker = Broker::start(dir.path(), &["--metrics", "127.0.0.1:0"]).await;
    let client = broker.client().await;
    client
        .create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("create group");
    // Waits up to 20 s for a message it would hold for 60 s.
    let mut a = broker.cli(
        "consumer A",
        &[
            "consume",
            TOPIC,
            GROUP,
            "--lease-ms",
            "60000",
            "--idle-exit-ms",
            "20000",
        ],
    );
    while broker.fetches_received().await < 1 {
        assert!(
            Instant::now() < deadline,
            "A never fetched: {:?}",
            a.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.sigkill(deadline).await;
    let published = publish_ids(&client, [7], 1).await;
    let options = FetchOptions {
        max_messages: 10,
        lease_ms: Some(5_000),
        wait_ms: 3_000,
    };
    let got = client.fetch(TOPIC, GROUP, options).await.expect("fetch");
    let s = client.stats(TOPIC).await.expect("stats");
    assert_eq!(
        got.iter()
            .map(|d| (d.offset, d.attempt))
            .collect::<Vec<_>>(),
        published.keys().map(|o| (*o, 1)).collect::<Vec<_>>(),
        "the message went to the killed consumer's fetch: {:?}",
        group_stats(&s, GROUP)
    );
}

// ----------------------------------------------------------------------------------------
// 3. The broker killed under load.

/// What the producers of the crash test share.
struct Load {
    /// Next sequence number (= message id) to publish.
    next_id: AtomicU64,
    /// Confirmed id → confirmed offset.
    confirmed: Mutex<HashMap<u128, u64>>,
    /// Confirms so far, for the controller to wait on.
    confirms: watch::Sender<u64>,
    /// Retries confirmed as duplicates: the first try was stored though its confirm was lost.
    duplicates: AtomicU64,
    /// Publishes that failed with a lost connection and were retried.
    retries: AtomicU64,
    /// Take no new id (finish the one under way).
    stop: AtomicBool,
}

/// The broker generation and its client; `None` while the broker is down.
type Current = (u64, Option<Arc<Client>>);

/// Publishes ids from the shared sequence, one at a time or in batches of 4, retrying each
/// until confirmed. A lost connection (or a request never sent) means the broker was
/// killed: wait for the next generation's client and retry the same ids. Any other error fails the test.
async fn producer(
    task: u32,
    load: Arc<Load>,
    mut current: watch::Receiver<Current>,
    deadline: Instant,
) -> Result<(), String> {
    let batch: u64 = if task.is_multiple_of(2) { 1 } else { 4 };
    let mut min_gen = 0;
    while !load.stop.load(Ordering::Acquire) {
        let first = load.next_id.fetch_add(batch, Ordering::Relaxed);
        let ids: Vec<u128> = (first..first + batch).map(u128::from).collect();
        let mut retried = false;
        let confirms: Vec<Confirm> = loop {
            let (generation, client) = {
                let v = tokio::time::timeout_at(
                    deadline,
                    current.wait_for(|(g, c)| *g >= min_gen && c.is_some()),
                )
                .await
                .map_err(|_| format!("task {task}: no broker before the deadline"))?
                .map_err(|_| format!("task {task}: the controller is gone"))?;
                (v.0, v.1.clone().ok_or("no client")?)
            };
            let result = if batch == 1 {
                client
                    .publish(TOPIC, message_for(ids[0]))
                    .await
                    .map(|c| vec![c])
            } else {
                let msgs = ids.iter().copied().map(message_for).collect();
                client.publish_batch(TOPIC, msgs).await
            };
            match result {
                Ok(c) => break c,
                // Lost in flight, or never sent to the killed broker: the next one's turn.
                Err(Error::Connection(_) | Error::NotSent(_)) => {
                    retried = true;
                    load.retries.fetch_add(1, Ordering::Relaxed);
                    min_gen = generation + 1;
                }
                Err(e) => return Err(format!("task {task}: publish of ids {ids:?}: {e}")),
            }
        };
        if confirms.len() != ids.len() {
            return Err(format!("task {task}: {confirms:?} for ids {ids:?}"));
        }
        let mut confirmed = load.confirmed.lock().map_err(|_| "poisoned")?;
        for (id, c) in ids.iter().zip(&confirms) {
            if c.duplicate && !retried {
                return Err(format!(
                    "task {task}: fresh id {id} confirmed as a duplicate"
                ));
            }
            if c.duplicate {
                load.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            if confirmed.insert(*id, c.offset).is_some() {
                return Err(format!("task {task}: id {id} confirmed twice"));
            }
        }
        drop(confirmed);
        load.confirms.send_modify(|n| *n += batch);
    }
    Ok(())
}

/// Every confirmed id in `snapshot` is stored at its confirmed offset; no id is stored twice.
async fn check_confirmed(client: &Client, snapshot: &HashMap<u128, u64>) -> HashMap<u128, u64> {
    let ids = by_id(&stored(client, TOPIC).await);
    for (id, off) in snapshot {
        match ids.get(id) {
            Some(o) if o == off => {}
            Some(o) => panic!("id {id} confirmed at offset {off} but stored at {o}"),
            None => panic!("confirmed id {id} (offset {off}) is lost"),
        }
    }
    ids
}

/// Prints the seed if the test fails.
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "broker crash test failed: seed {} (replay the kill points with {SEED_ENV}={})",
                self.0, self.0
            );
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

/// The broker is killed with SIGKILL under load and restarted on the same directory, again
/// and again. Producers retry every id whose publish failed until it is confirmed. After
/// every restart, every id confirmed so far is stored at its confirmed offset; at the end,
/// every id ever published is stored exactly once and a consumer group reads each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_under_load_loses_no_confirmed_publish() {
    const PRODUCERS: u32 = 4;
    let seed = env_u64(SEED_ENV).unwrap_or_else(rand::random);
    let iterations = env_u64(ITERATIONS_ENV).unwrap_or(ITERATIONS_DEFAULT).max(1);
    println!("broker crash test: seed {seed} ({SEED_ENV}), {iterations} kills ({ITERATIONS_ENV})");
    let _report = SeedReport(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = std::time::Instant::now();
    let deadline = Instant::now() + WAIT * 2;
    let dir = tempfile::tempdir().expect("temp dir");

    let mut broker = Broker::start(dir.path(), &[]).await;
    let client = Arc::new(broker.client().await);
    // A group from the start: what the final read must deliver, each once.
    client
        .create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("create group");
    let (current_tx, current_rx) = watch::channel::<Current>((0, Some(client)));
    let (confirms_tx, mut confirms_rx) = watch::channel(0u64);
    let load = Arc::new(Load {
        next_id: AtomicU64::new(0),
        confirmed: Mutex::new(HashMap::new()),
        confirms: confirms_tx,
        duplicates: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|t| tokio::spawn(producer(t, load.clone(), current_rx.clone(), deadline)))
        .collect();

    for generation in 1..=iterations {
        // Kill after a random number of further confirms: sometimes right after a restart,
        // mostly in full flow.
        let more = if rng.random_bool(0.25) {
            rng.random_range(1..=5)
        } else {
            rng.random_range(20..=400)
        };
        let target = *confirms_rx.borrow() + more;
        tokio::time::timeout_at(deadline, confirms_rx.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("kill {generation}: no {more} confirms in time"))
            .expect("confirm counter");
        broker.proc.sigkill(deadline).await;
        current_tx.send_replace((generation, None));

        broker = Broker::start(dir.path(), &[]).await;
        let client = Arc::new(broker.client().await);
        // Every confirm was handed out before the kill: all must be stored.
        let snapshot = load.confirmed.lock().expect("confirmed").clone();
        let stored_ids = check_confirmed(&client, &snapshot).await;
        println!(
            "kill {generation} after {more} more confirms: {} confirmed, {} stored",
            snapshot.len(),
            stored_ids.len()
        );
        if generation == iterations {
            load.stop.store(true, Ordering::Release);
        }
        current_tx.send_replace((generation, Some(client)));
    }
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("producer failed: {e}"),
            Ok(Err(e)) => panic!("producer panicked: {e}"),
            Err(_) => panic!("producers did not finish before the deadline"),
        }
    }

    let client = current_tx.borrow().1.clone().expect("client");
    let confirmed = load.confirmed.lock().expect("confirmed").clone();
    let published = load.next_id.load(Ordering::Relaxed);
    // Producers take ids from one sequence and finish each: every id taken is confirmed.
    assert_eq!(
        confirmed.len() as u64,
        published,
        "ids taken but never confirmed"
    );
    let stored_ids = check_confirmed(&client, &confirmed).await;
    assert_eq!(
        stored_ids.len(),
        confirmed.len(),
        "stored messages that were never confirmed"
    );

    // A consumer reads every message once.
    let mut delivered: HashMap<u128, u32> = HashMap::new();
    loop {
        let options = FetchOptions {
            max_messages: 1000,
            lease_ms: Some(60_000),
            wait_ms: 0,
        };
        let ds = client.fetch(TOPIC, GROUP, options).await.expect("fetch");
        if ds.is_empty() {
            break;
        }
        for d in &ds {
            let id =
                d.id.unwrap_or_else(|| panic!("delivery without an id: {d:?}"));
            assert_eq!(d.payload.as_ref(), payload_for(id).as_bytes(), "{d:?}");
            assert_eq!(confirmed.get(&id), Some(&d.offset), "{d:?}");
            *delivered.entry(id).or_default() += 1;
        }
        let receipts: Vec<_> = ds.iter().map(|d| d.receipt()).collect();
        client.ack(TOPIC, GROUP, &receipts).await.expect("ack");
    }
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids delivered more than once: {twice:?}");
    assert_eq!(
        delivered.len(),
        confirmed.len(),
        "the group did not get every message"
    );
    let s = client.stats(TOPIC).await.expect("stats");
    assert_eq!(group_stats(&s, GROUP).lag, 0, "{s:?}");
    println!(
        "broker crash test: {iterations} kills in {:.1}s: {published} ids confirmed; {} \
         publishes retried after a lost connection; {} retried messages had been stored \
         already (confirmed as duplicates)",
        started.elapsed().as_secs_f64(),
        load.retries.load(Ordering::Relaxed),
        load.duplicates.load(Ordering::Relaxed)
    );
    assert!(
        load.retries.load(Ordering::Relaxed) > 0,
        "no publish was in flight at any kill: the test showed nothing"
    );
}

// ----------------------------------------------------------------------------------------
// 4. SIGTERM.

/// Publishes ids `task * 1_000_000 + i` one at a time until a publish fails, counting each
/// confirm in `progress`; returns the confirms (id, offset) and the error.
async fn publish_until_error(
    client: Arc<Client>,
    task: u32,
    progress: Arc<watch::Sender<usize>>,
) -> (Vec<(u128, u64)>, Error) {
    let mut confirmed = Vec::new();
    let mut id = u128::from(task) * 1_000_000;
    loop {
        match client.publish(TOPIC, message_for(id)).await {
            Ok(c) => {
                assert!(!c.duplicate, "fresh id {id} confirmed as a duplicate");
                confirmed.push((id, c.offset));
                progress.send_modify(|n| *n += 1);
            }
            Err(e) => return (confirmed, e),
        }
        id += 1;
    }
}

/// SIGTERM while publishes are in flight and a consumer waits in a long poll: the broker
/// answers what it took on, exits with status 0 (promptly: the long poll is cut short) and
/// says `queue: stopped cleanly`; after a restart every confirmed publish is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_confirmed_publishes() {
    const PRODUCERS: u32 = 4;
    const CONFIRMS_BEFORE_TERM: usize = 200;
    const IDLE_TOPIC: &str = "idle";
    let dir = tempfile::tempdir().expect("temp dir");
    let deadline = Instant::now() + WAIT;
    let mut broker = Broker::start(dir.path(), &[]).await;
    let client = Arc::new(broker.client().await);

    // A long poll on an empty topic, to be in flight at the SIGTERM.
    let poller = broker.client().await;
    let long_poll = tokio::spawn(async move {
        let options = FetchOptions {
            max_messages: 1,
            lease_ms: None,
            wait_ms: 60_000,
        };
        poller.fetch(IDLE_TOPIC, GROUP, options).await
    });
    // The fetch creates its group: once the group shows, the fetch is in the broker.
    loop {
        if let Ok(s) = client.stats(IDLE_TOPIC).await
            && s.groups.iter().any(|g| g.name == GROUP)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the long poll never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (progress_tx, mut progress_rx) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|t| tokio::spawn(publish_until_error(client.clone(), t, progress_tx.clone())))
        .collect();
    tokio::time::timeout_at(
        deadline,
        progress_rx.wait_for(|n| *n >= CONFIRMS_BEFORE_TERM),
    )
    .await
    .expect("no publishes confirmed before the deadline")
    .expect("progress counter");
    let term_sent = std::time::Instant::now();
    broker.proc.sigterm();
    let lines = broker.proc.rest(deadline).await;
    let status = broker.proc.wait_exit(deadline).await;
    let stop_took = term_sent.elapsed();
    assert!(
        status.success(),
        "the broker exited with {status} after SIGTERM; stdout {lines:?}; stderr {:?}",
        broker.proc.stderr()
    );
    assert!(
        lines.iter().any(|l| l == "queue: stopped cleanly"),
        "no clean-stop line: {lines:?}"
    );
    // Far below the fetch's 60 s and the broker's 30 s grace: the long poll did not hold up
    // the shutdown.
    assert!(
        stop_took < Duration::from_secs(10),
        "the broker took {stop_took:?} to stop"
    );
    match tokio::time::timeout_at(deadline, long_poll).await {
        Ok(Ok(Ok(d))) => assert!(d.is_empty(), "{d:?}"),
        Ok(Ok(Err(Error::Connection(_)))) => {}
        other => panic!("the long poll ended with {other:?}"),
    }

    let mut confirmed: HashMap<u128, u64> = HashMap::new();
    for t in tasks {
        let (c, e) = tokio::time::timeout_at(deadline, t)
            .await
            .expect("producers stop once the broker is gone")
            .expect("producer task");
        assert!(
            matches!(e, Error::Connection(_) | Error::NotSent(_) | Error::Closed),
            "publish failed with {e:?}, not a lost connection"
        );
        confirmed.extend(c);
    }
    assert!(
        confirmed.len() >= CONFIRMS_BEFORE_TERM,
        "{}",
        confirmed.len()
    );

    let restarted = Broker::start(dir.path(), &[]).await;
    let client = restarted.client().await;
    let stored_ids = check_confirmed(&client, &confirmed).await;
    println!(
        "SIGTERM: stopped in {stop_took:?}; {} publishes confirmed, {} stored (the rest were \
         in flight, unanswered)",
        confirmed.len(),
        stored_ids.len()
    );
    // And the restarted broker stops cleanly too.
    drop(client);
    let mut restarted = restarted;
    restarted.proc.sigterm();
    let lines = restarted.proc.finish(deadline).await;
    assert!(
        lines.iter().any(|l| l == "queue: stopped cleanly"),
        "{lines:?}"
    );
}

/// The body of `GET /metrics` from the broker's metrics endpoint.
async fn scrape(broker: &Broker) -> String {
    let addr = broker
        .metrics_addr
        .as_deref()
        .expect("broker started with --metrics");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the metrics request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the metric line that starts with `prefix` (name and labels).
fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix:?} in:\n{body}"))
}

/// The operator's commands against a live broker, in text and JSON, and the metrics they
/// leave behind: dead letters listed, replayed and discarded; peek; stats; topics; a clear
/// error (and a failing exit status) for a dead letter that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_and_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::start(dir.path(), &["--metrics", "127.0.0.1:0"]).await;
    let deadline = Instant::now() + WAIT;
    let client = broker.client().await;
    client
        .create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("group");
    for id in 1..=3u128 {
        client
            .publish(TOPIC, message_for(id))
            .await
            .expect("publish");
    }
    let ds = client
        .fetch(
            TOPIC,
            GROUP,
            FetchOptions {
                max_messages: 2,
                lease_ms: Some(60_000),
                wait_ms: 1000,
            },
        )
        .await
        .expect("fetch");
    assert_eq!(ds.len(), 2);
    for d in &ds {
        client
            .reject(TOPIC, GROUP, d.receipt(), "poison: bad sku")
            .await
            .expect("reject");
    }

    // The dead letters, as JSON and as text.
    let listed = {
        let mut all = Vec::new();
        while Instant::now() < deadline {
            let mut p = broker.cli("dlq list", &["dlq", "list", TOPIC, "--json"]);
            let lines = p.finish(deadline).await;
            let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
            all = v.as_array().cloned().unwrap_or_default();
            // Rejections are moved to the dead-letter topic in the background.
            if all.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        all
    };
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (d, delivered) in listed.iter().zip(&ds) {
        assert_eq!(d["reason"], "poison: bad sku", "{d}");
        assert_eq!(d["group"], GROUP, "{d}");
        assert_eq!(d["original_offset"], delivered.offset, "{d}");
        assert_eq!(d["payload"], payload_for(delivered.id.expect("id")), "{d}");
    }
    let text = broker
        .cli("dlq list text", &["dlq", "list", TOPIC])
        .finish(deadline)
        .await
        .join("\n");
    assert!(
        text.contains("REASON") && text.contains("poison: bad sku"),
        "{text}"
    );

    let dead: Vec<String> = listed
        .iter()
        .map(|d| d["dead_offset"].to_string())
        .collect();
    let replayed = broker
        .cli("dlq replay", &["dlq", "replay", TOPIC, &dead[0]])
        .finish(deadline)
        .await
        .join("\n");
    assert!(replayed.starts_with("replayed dead letter"), "{replayed}");
    broker
        .cli(
            "dlq discard",
            &["dlq", "discard", "--force", TOPIC, &dead[1]],
        )
        .finish(deadline)
        .await;
    let after = broker
        .cli("dlq list after", &["dlq", "list", TOPIC, "--json"])
        .finish(deadline)
        .await;
    assert_eq!(after, vec!["[]".to_string()]);

    // A dead letter that is not there: a clear error and a failing exit status.
    let mut missing = broker.cli("dlq replay missing", &["dlq", "replay", TOPIC, "999"]);
    missing.rest(deadline).await;
    let status = missing.wait_exit(deadline).await;
    assert!(!status.success());
    let stderr = missing.stderr_after_exit();
    assert!(
        stderr.contains("no pending dead letter at offset 999"),
        "{}",
        stderr
    );

    // Peek: the three messages and the replayed copy, nothing consumed.
    let peek = broker
        .cli("peek", &["peek", TOPIC, "--json"])
        .finish(deadline)
        .await;
    let peeked: serde_json::Value = serde_json::from_str(&peek[0]).expect("json");
    let ids: Vec<String> = peeked
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("-").to_string())
        .collect();
    assert_eq!(ids.len(), 4, "{peeked}");
    assert_eq!(ids[..3], ["1", "2", "3"]);

    let stats = broker.cli_stats(TOPIC, deadline).await;
    let g = group_stats(&stats, GROUP);
    assert_eq!(g.dead_lettered, 2);
    assert_eq!(stats.dead_letters_pending, 0);
    let text = broker
        .cli("stats text", &["stats"])
        .finish(deadline)
        .await
        .join("\n");
    assert!(text.contains("GROUP") && text.contains(GROUP), "{text}");
    let topics = broker
        .cli("topics", &["topics", "--json"])
        .finish(deadline)
        .await;
    let topics: Vec<String> = serde_json::from_str(&topics[0]).expect("json");
    assert!(topics.contains(&TOPIC.to_string()), "{topics:?}");
    assert!(topics.contains(&format!("{TOPIC}.dlq")), "{topics:?}");

    // Metrics agree with the stats.
    let body = scrape(&broker).await;
    let lag = format!("queue_group_lag{{topic=\"{TOPIC}\",group=\"{GROUP}\"}} ");
    assert_eq!(metric(&body, &lag), g.lag as f64);
    let dead = format!("queue_group_dead_lettered_total{{topic=\"{TOPIC}\",group=\"{GROUP}\"}} ");
    assert_eq!(metric(&body, &dead), 2.0);
    assert_eq!(metric(&body, "queue_broker_messages_published_total "), 3.0);
    let fsyncs = metric(&body, "queue_fsync_duration_seconds_count ");
    assert!(fsyncs >= 3.0, "{fsyncs}");
    assert_eq!(
        metric(&body, "queue_fsync_duration_seconds_bucket{le=\"+Inf\"} "),
        fsyncs
    );
    assert!(metric(&body, "queue_broker_requests_total{op=\"reject\"} ") >= 2.0);
}

/// `GET path` on `addr`: the status and body, or `None` if nothing accepts the connection.
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// The fsyncgate lesson, end to end: a broker whose fsync fails (the test-only fail point,
/// inert unless `QUEUE_FAIL_POINT` is set) must not serve on. `/readyz` answers 200 while
/// healthy; the publish whose fsync fails gets `Error::Failed`; from then on `/readyz` never
/// answers 200 (503 while the broker drains, then nothing); `queue serve` exits with a
/// failing status and says why; a restart on the same directory has every confirmed
/// publish at its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_stops_the_broker_with_a_failing_exit() {
    const CONFIRMED: u64 = 5;
    let dir = tempfile::tempdir().expect("temp dir");
    let deadline = Instant::now() + WAIT;
    // One publish at a time is one write round and one fdatasync: the sixth fails.
    let fail_point = format!("fsync-after:{CONFIRMED}");
    let mut broker = Broker::start_with_env(
        dir.path(),
        &["--metrics", "127.0.0.1:0"],
        &[("QUEUE_FAIL_POINT", fail_point.as_str())],
    )
    .await;
    let metrics = broker.metrics_addr.clone().expect("metrics address");
    assert_eq!(
        http_get(&metrics, "/readyz").await,
        Some((200, "ready\n".to_string())),
        "healthy broker"
    );
    let client = broker.client().await;
    // A long poll in flight at the fault: it must end with the failure, not keep the
    // stopping broker waiting for its minute.
    let poller = broker.client().await;
    let long_poll = tokio::spawn(async move {
        let options = FetchOptions {
            max_messages: 1,
            lease_ms: None,
            wait_ms: 60_000,
        };
        poller.fetch("idle", GROUP, options).await
    });
    // The fetch creates its group: once the group shows, the fetch is in the broker.
    loop {
        if let Ok(s) = client.stats("idle").await
            && s.groups.iter().any(|g| g.name == GROUP)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the long poll never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut confirmed = BTreeMap::new();
    for id in 1..=u128::from(CONFIRMED) {
        let c = client
            .publish(TOPIC, message_for(id))
            .await
            .unwrap_or_else(|e| panic!("publish {id} before the fault: {e}"));
        confirmed.insert(c.offset, id);
    }
    match client.publish(TOPIC, message_for(99)).await {
        Err(Error::Failed(why)) => assert!(why.contains("injected"), "{why}"),
        other => panic!("the publish whose fsync failed answered {other:?}"),
    }
    // Never ready again: 503 while the broker drains, then nothing listens.
    let mut saw_503 = false;
    while let Some((status, body)) = http_get(&metrics, "/readyz").await {
        assert_eq!(status, 503, "readyz after the failure: {body}");
        saw_503 = true;
        assert!(Instant::now() < deadline, "the broker kept serving /readyz");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = broker.proc.wait_exit(deadline).await;
    let stderr = broker.proc.stderr_after_exit();
    assert_eq!(status.code(), Some(1), "exit status; stderr: {stderr}");
    assert!(
        stderr.contains("stopped serving") && stderr.contains("injected"),
        "stderr: {stderr}"
    );
    match tokio::time::timeout_at(deadline, long_poll).await {
        Ok(Ok(Err(Error::Failed(_) | Error::Connection(_)))) => {}
        // The stopping broker may answer the poll first, with nothing delivered.
        Ok(Ok(Ok(delivered))) if delivered.is_empty() => {}
        other => panic!("the long poll in flight at the fault ended with {other:?}"),
    }
    drop(client);
    println!("readyz answered 503 before the exit: {saw_503}");

    // A restart without the fail point: everything confirmed is there.
    let mut broker = Broker::start(dir.path(), &[]).await;
    let client = broker.client().await;
    client
        .create_group(TOPIC, GROUP, StartAt::Earliest)
        .await
        .expect("group");
    let got = client
        .fetch(
            TOPIC,
            GROUP,
            FetchOptions {
                max_messages: 100,
                lease_ms: None,
                wait_ms: 0,
            },
        )
        .await
        .expect("fetch after restart");
    let by_offset: BTreeMap<u64, (Option<u128>, Vec<u8>)> = got
        .iter()
        .map(|d| (d.offset, (d.id, d.payload.to_vec())))
        .collect();
    for (offset, id) in &confirmed {
        assert_eq!(
            by_offset.get(offset),
            Some(&(Some(*id), payload_for(*id).into_bytes())),
            "confirmed publish {id} at offset {offset} after the restart"
        );
    }
    drop(client);
    broker.proc.sigterm();
    broker.proc.finish(deadline).await;
}

/// `queue serve` refuses to listen beyond loopback without a secret, and refuses a short
/// one; with `QUEUE_SECRET` it listens on every address, and the operator CLI works with
/// the secret (from the environment) and fails clearly without it or with a wrong one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_needs_a_secret_beyond_loopback_and_the_cli_needs_it_too() {
    let deadline = Instant::now() + WAIT;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("UTF-8 path");
    let serve = ["serve", "--data", data, "--listen", "0.0.0.0:0"];
    for (env, expected) in [
        (None, "refusing to listen on 0.0.0.0"),
        (Some("too-short"), "at least 16"),
    ] {
        let env: Vec<(&str, &OsStr)> = env
            .map(|v| (SECRET_ENV, OsStr::new(v)))
            .into_iter()
            .collect();
        let mut p = Proc::spawn_env("insecure broker", &serve, &env);
        let lines = p.rest(deadline).await;
        let status = p.wait_exit(deadline).await;
        let stderr = p.stderr_after_exit();
        assert!(!status.success(), "it served: {lines:?}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(lines.is_empty(), "{lines:?}");
    }
    // Nothing was created for a refused start.
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);

    let mut broker = Proc::spawn_env(
        "secured broker",
        &serve,
        &[(SECRET_ENV, OsStr::new(SECRET))],
    );
    let line = broker
        .next_line(deadline)
        .await
        .expect("the broker prints its address");
    let port = line
        .strip_prefix("queue: listening on 0.0.0.0:")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert!(line.contains("secret required"), "{line}");
    let addr = format!("127.0.0.1:{port}");
    let cli = |what: &str, env: &[(&str, &OsStr)]| {
        Proc::spawn_env(what, &["--broker", &addr, "--json", "topics"], env)
    };
    let mut ok = cli("queue topics", &[(SECRET_ENV, OsStr::new(SECRET))]);
    assert_eq!(ok.finish(deadline).await, vec!["[]".to_string()]);
    for (env, expected) in [
        (None, "requires authentication"),
        (Some("not-the-secret-at-all"), "wrong proof"),
    ] {
        let env: Vec<(&str, &OsStr)> = env
            .map(|v| (SECRET_ENV, OsStr::new(v)))
            .into_iter()
            .collect();
        let mut p = cli("queue topics without the secret", &env);
        let lines = p.rest(deadline).await;
        let status = p.wait_exit(deadline).await;
        let stderr = p.stderr_after_exit();
        assert!(!status.success(), "{lines:?}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    broker.sigterm();
    assert!(broker.wait_exit(deadline).await.success());
}
