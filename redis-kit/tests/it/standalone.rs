//! One server: durable defaults, SIGKILL and restart, wrong settings on purpose, start-up
//! failures, and clean-up on drop.

use std::path::Path;

use redis_kit::{KitError, RedisOptions, RedisServer, Resp, info_field};

#[test]
fn a_server_starts_durable_and_answers_ping() -> Result<(), KitError> {
    let server = RedisServer::start(RedisOptions::new())?;
    assert_ne!(server.port(), 6379, "the shared Redis's port");
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.cmd(&["PING"])?, Resp::Simple("PONG".into()));

    assert_eq!(server.config_get("appendonly")?, "yes");
    assert_eq!(server.config_get("appendfsync")?, "always");
    assert_eq!(server.config_get("maxmemory-policy")?, "noeviction");
    assert_eq!(server.config_get("save")?, "");
    let persistence = server.info("persistence")?;
    assert_eq!(
        info_field(&persistence, "aof_enabled"),
        Some("1"),
        "{persistence}"
    );
    let replication = server.info("replication")?;
    assert_eq!(info_field(&replication, "role"), Some("master"));
    assert_eq!(
        server.config_get("dir")?,
        server
            .dir()
            .canonicalize()
            .map_err(|e| KitError::Io {
                what: "dir".into(),
                source: e
            })?
            .to_string_lossy()
    );
    Ok(())
}

#[test]
fn keys_written_before_a_sigkill_are_there_after_restart() -> Result<(), KitError> {
    let mut server = RedisServer::start(RedisOptions::new())?;
    let port = server.port();
    let mut conn = server.connect()?;
    for i in 0..100 {
        conn.cmd(&["RPUSH", "list", &i.to_string()])?;
    }
    conn.cmd(&["SET", "last", "written just before the kill"])?;
    let old_pid = server.pid();

    server.kill()?;
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    assert!(server.cmd(&["PING"]).is_err(), "a killed server answered");

    server.restart()?;
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_ne!(server.pid(), old_pid);
    assert_eq!(
        server.cmd(&["GET", "last"])?.as_str(),
        Some("written just before the kill")
    );
    assert_eq!(server.cmd(&["LLEN", "list"])?.as_int(), Some(100));
    let last = server.cmd(&["LINDEX", "list", "-1"])?;
    assert_eq!(last.as_str(), Some("99"));
    let persistence = server.info("persistence")?;
    assert_eq!(info_field(&persistence, "aof_enabled"), Some("1"));

    // A restart of a running server is a crash and a restart too.
    server.restart()?;
    assert_eq!(server.cmd(&["LLEN", "list"])?.as_int(), Some(100));
    Ok(())
}

#[test]
fn a_wrongly_configured_server_says_so() -> Result<(), KitError> {
    let server = RedisServer::start(
        RedisOptions::new()
            .appendonly(false)
            .appendfsync("everysec")
            .maxmemory_policy("allkeys-lru")
            .config_line("maxmemory 50mb"),
    )?;
    assert_eq!(server.config_get("appendonly")?, "no");
    assert_eq!(server.config_get("appendfsync")?, "everysec");
    assert_eq!(server.config_get("maxmemory-policy")?, "allkeys-lru");
    assert_eq!(
        server.config_get("maxmemory")?,
        (50 * 1024 * 1024).to_string()
    );
    let persistence = server.info("persistence")?;
    assert_eq!(info_field(&persistence, "aof_enabled"), Some("0"));
    Ok(())
}

#[test]
fn an_error_reply_is_an_error() -> Result<(), KitError> {
    let server = RedisServer::start(RedisOptions::new())?;
    match server.cmd(&["NO-SUCH-COMMAND"]) {
        Err(KitError::Reply(text)) => assert!(text.starts_with("ERR"), "{text}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    // The connection is still usable after an error reply.
    let mut conn = server.connect()?;
    assert!(conn.cmd(&["INCRBY", "k", "x"]).is_err());
    assert_eq!(conn.cmd(&["INCRBY", "k", "2"])?, Resp::Integer(2));
    Ok(())
}

#[test]
fn a_server_that_cannot_start_quotes_its_log() {
    let err = RedisServer::start(RedisOptions::new().config_line("no-such-directive yes"))
        .expect_err("a bad directive must stop the start");
    let text = err.to_string();
    assert!(matches!(err, KitError::Start { .. }), "{text}");
    // Redis prints config errors, with the offending line, before it opens its log.
    assert!(text.contains("no-such-directive"), "{text}");
    assert!(text.contains("Bad directive"), "{text}");

    let err = RedisServer::start(RedisOptions::new().appendfsync("sometimes"))
        .expect_err("a bad appendfsync must stop the start");
    assert!(err.to_string().contains("sometimes"), "{err}");
}

#[test]
fn dropping_a_server_kills_it_and_removes_its_directory() -> Result<(), KitError> {
    let server = RedisServer::start(RedisOptions::new())?;
    let pid = server.pid().expect("a started server runs");
    let dir = server.dir().to_path_buf();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(dir.join("redis.conf").exists());
    drop(server);
    // Reaped, not a zombie: the pid is gone from /proc.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    assert!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}
