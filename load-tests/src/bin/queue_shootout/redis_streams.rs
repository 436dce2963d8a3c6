//! Redis Streams at fsync-before-confirm: a scratch `redis-server` of our own on a free
//! loopback port with `--appendonly yes --appendfsync always --save ""` in a fresh
//! directory (the shared Redis on 6379 keeps nothing on disk and is left alone). With
//! `appendfsync always` Redis writes the commands of an event-loop round to its AOF and
//! fsyncs it before it sends their replies, so a reply means durable.
//!
//! Publish: `XADD shootout * p <payload>`, awaited. Consume: `XREADGROUP GROUP g cN COUNT
//! batch STREAMS shootout >`, then one `XACK` of all its ids (both are writes, both fsynced).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use serde_json::json;

use crate::common::{
    Publisher, Res, Seen, SystemRun, Workload, err, finish_consume, free_port, note, run_publish,
    wait_until,
};
use crate::machine::Meter;
use crate::scratch::{Scratch, fresh_dir};

const STREAM: &str = "shootout";
const GROUP: &str = "g";
/// A reply slower than this is an error (the client's default, 500 ms, is too short for an
/// fsync stall, which is part of what is measured).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the scratch server; returns it and its port.
fn start(redis_server: &str, base: &Path) -> Res<(Scratch, u16)> {
    let dir = fresh_dir(base, "redis")?;
    let port = free_port()?;
    let mut cmd = Command::new(redis_server);
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(&dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg("always")
        .arg("--save")
        .arg("")
        // No AOF rewrite (a fork rewriting the whole file) in the middle of a phase.
        .arg("--auto-aof-rewrite-percentage")
        .arg("0")
        .arg("--daemonize")
        .arg("no");
    Ok((Scratch::spawn("redis", dir, cmd)?, port))
}

async fn connect(client: &Client) -> Res<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| err(format!("connect to redis: {e}")))
}

async fn config_get(con: &mut MultiplexedConnection, key: &str) -> Res<String> {
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(key)
        .query_async(con)
        .await
        .map_err(|e| err(format!("CONFIG GET {key}: {e}")))?;
    Ok(v.get(1).cloned().unwrap_or_default())
}

struct RedisPublisher {
    con: MultiplexedConnection,
}

impl Publisher for RedisPublisher {
    async fn publish(&mut self, payload: Bytes) -> Res<()> {
        let id: Value = redis::cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("p")
            .arg(&payload[..])
            .query_async(&mut self.con)
            .await
            .map_err(|e| err(format!("XADD: {e}")))?;
        match id {
            Value::BulkString(_) | Value::SimpleString(_) => Ok(()),
            other => Err(err(format!("XADD replied {other:?}"))),
        }
    }
}

/// A started and checked scratch server: the process, its port, a client, an admin
/// connection, its version and its durability settings as read back. Our queue on Redis
/// (`redis_queue.rs`) runs on one of these too, so both see the same server settings.
pub struct Checked {
    pub server: Scratch,
    pub port: u16,
    pub client: Client,
    pub admin: MultiplexedConnection,
    pub version: String,
    pub durability: serde_json::Value,
}

/// Starts a scratch server (see the module docs), waits for it and checks its settings.
pub async fn start_checked(redis_server: &str, base: &Path, label: &str) -> Res<Checked> {
    let (mut server, port) = start(redis_server, base)?;
    let pid = server.pid();
    let client = Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| err(format!("redis client: {e}")))?;
    let mut admin = wait_until(Duration::from_secs(10), || {
        let exited = server.exited();
        let client = client.clone();
        async move {
            if let Some(status) = exited {
                return Err(err(format!("redis-server exited at startup ({status})")));
            }
            let mut con = connect(&client).await?;
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .map_err(|e| err(format!("PING: {e}")))?;
            Ok(con)
        }
    })
    .await
    .map_err(|e| err(format!("{e}\n{}", server.tail())))?;
    note!(
        "{label}: scratch redis-server on 127.0.0.1:{port} (pid {pid:?}), AOF in {}",
        server.dir.display()
    );
    let (version, durability) = durability_of(&mut admin).await?;
    Ok(Checked {
        server,
        port,
        client,
        admin,
        version,
        durability,
    })
}

pub async fn run(w: &Workload, redis_server: &str, base: &Path, meter: &Meter) -> Res<SystemRun> {
    let Checked {
        mut server,
        client,
        mut admin,
        version,
        durability,
        ..
    } = start_checked(redis_server, base, "redis").await?;
    let pid = server.pid();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .exec_async(&mut admin)
        .await
        .map_err(|e| err(format!("XGROUP CREATE: {e}")))?;

    let mut cons = Vec::with_capacity(w.connections);
    for _ in 0..w.connections {
        cons.push(connect(&client).await?);
    }

    // Publish.
    let publishers = (0..w.publishers)
        .map(|i| RedisPublisher {
            con: cons[i % cons.len()].clone(),
        })
        .collect();
    let snap = meter.begin(pid);
    let publish = run_publish(w, publishers).await?;
    let publish_resources = meter.end(&snap, w.messages);
    let xlen: u64 = redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(&mut admin)
        .await
        .map_err(|e| err(format!("XLEN: {e}")))?;
    if xlen != w.messages {
        return Err(err(format!(
            "XLEN {xlen} after {} confirmed XADDs",
            w.messages
        )));
    }
    let mut checks = vec![format!("after publish: XLEN = {xlen}")];

    // Consume + ack.
    let seen = Seen::new(w);
    let snap = meter.begin(pid);
    let mut handles = Vec::with_capacity(w.consumers);
    for i in 0..w.consumers {
        let con = cons[i % cons.len()].clone();
        let seen = seen.clone();
        let batch = w.batch;
        handles.push(tokio::spawn(consume_as(format!("c{i}"), con, seen, batch)));
    }
    let consume = finish_consume(
        w,
        &seen,
        handles,
        format!(
            "{} consumers, XREADGROUP COUNT {} (no BLOCK; 1 ms pause when empty) then one XACK of all its ids",
            w.consumers, w.batch
        ),
    )
    .await?;
    let consume_resources = meter.end(&snap, w.messages);
    let pending = pending_count(&mut admin).await?;
    if pending != 0 {
        return Err(err(format!("{pending} entries still pending after acking")));
    }
    checks.push("after consume: XPENDING count 0".into());
    drop((admin, cons));
    server.stop();
    Ok(SystemRun {
        version,
        durability,
        publish,
        publish_resources,
        consume,
        consume_resources,
        checks,
    })
}

/// The server's version and its durability settings, read back (`CONFIG GET`); refuses a
/// server that does not fsync every write before replying.
async fn durability_of(admin: &mut MultiplexedConnection) -> Res<(String, serde_json::Value)> {
    let appendonly = config_get(admin, "appendonly").await?;
    let appendfsync = config_get(admin, "appendfsync").await?;
    let save = config_get(admin, "save").await?;
    let policy = config_get(admin, "maxmemory-policy").await?;
    if appendonly != "yes" || appendfsync != "always" {
        return Err(err(format!(
            "redis-server runs with appendonly {appendonly:?}, appendfsync {appendfsync:?}"
        )));
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(admin)
        .await
        .map_err(|e| err(format!("INFO server: {e}")))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| format!("redis {}", v.trim()))
        .unwrap_or_else(|| "redis (version unknown)".into());
    let durability = json!({
        "publish": format!(
            "appendonly {appendonly}, appendfsync {appendfsync} (read back with CONFIG GET): the AOF is written and fsynced before the replies of each event-loop round"
        ),
        "ack": "XREADGROUP and XACK are writes, so they are fsynced before their replies too",
        "server": format!("scratch redis-server on a free port, save {save:?}, maxmemory-policy {policy}, auto-aof-rewrite off, AOF on the same disk as the others"),
    });
    Ok((version, durability))
}

/// One consumer of the group: reads batches (`XREADGROUP`, no `BLOCK`: it would hold the
/// shared connection, so it polls every millisecond when empty), acks each batch with one
/// `XACK` and marks its messages seen, until every message was seen.
async fn consume_as(
    consumer: String,
    mut con: MultiplexedConnection,
    seen: std::sync::Arc<Seen>,
    batch: usize,
) -> Res<()> {
    while !seen.done() {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&consumer)
            .arg("COUNT")
            .arg(batch)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">")
            .query_async(&mut con)
            .await
            .map_err(|e| err(format!("XREADGROUP: {e}")))?;
        let entries = entries(reply)?;
        if entries.is_empty() {
            // No BLOCK: it would hold the shared connection. Poll instead.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let mut xack = redis::cmd("XACK");
        xack.arg(STREAM).arg(GROUP);
        for (id, _) in &entries {
            xack.arg(&id[..]);
        }
        let n: u64 = xack
            .query_async(&mut con)
            .await
            .map_err(|e| err(format!("XACK: {e}")))?;
        if n != entries.len() as u64 {
            return Err(err(format!(
                "XACK acknowledged {n} of {} ids",
                entries.len()
            )));
        }
        for (_, payload) in &entries {
            seen.acked(payload)?;
        }
    }
    Ok(())
}

/// (id, payload) of each entry of an `XREADGROUP` reply of one stream, whose entries each
/// carry one field. Parsed from the raw reply (RESP2 array or RESP3 map; nil when empty).
fn entries(reply: Value) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
    let bad = |what: &str| err(format!("XREADGROUP: unexpected reply ({what})"));
    let list = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(pair)) => pair.into_iter().nth(1),
            Some(_) => return Err(bad("stream is not a pair")),
            None => return Ok(Vec::new()),
        },
        Value::Map(streams) => streams.into_iter().next().map(|(_, e)| e),
        Value::ServerError(e) => return Err(err(format!("XREADGROUP: {e}"))),
        _ => return Err(bad("not an array")),
    };
    let Some(Value::Array(list)) = list else {
        return Err(bad("no entry array"));
    };
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let Value::Array(entry) = entry else {
            return Err(bad("entry is not an array"));
        };
        let mut parts = entry.into_iter();
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
            (parts.next(), parts.next())
        else {
            return Err(bad("entry is not [id, fields]"));
        };
        let mut fields = fields.into_iter();
        let (Some(_), Some(Value::BulkString(payload)), None) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad("entry is not one field"));
        };
        out.push((id, payload));
    }
    Ok(out)
}

/// Entries delivered to the group and not acked (`XPENDING shootout g`).
async fn pending_count(con: &mut MultiplexedConnection) -> Res<u64> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(con)
        .await
        .map_err(|e| err(format!("XPENDING: {e}")))?;
    match reply {
        Value::Array(summary) => match summary.first() {
            Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| err("XPENDING: negative count")),
            _ => Err(err("XPENDING: unexpected reply")),
        },
        _ => Err(err("XPENDING: unexpected reply")),
    }
}
