//! pg-kit against real PostgreSQL servers: a durable start on a free port, committed rows
//! through a SIGKILL and crash recovery, clean-up on drop.

use std::os::unix::fs::MetadataExt;

use pg_kit::{KitError, PgServer};

#[test]
fn a_server_starts_durable_on_its_own_port() -> Result<(), KitError> {
    let pg = PgServer::start()?;
    assert_ne!(pg.port(), 5432, "the shared PostgreSQL's port");
    assert_eq!(
        pg.url("x"),
        format!("postgres://postgres@127.0.0.1:{}/x", pg.port())
    );
    for (setting, value) in [
        ("fsync", "on"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "on"),
        ("listen_addresses", "127.0.0.1"),
        ("unix_socket_directories", ""),
        ("max_connections", "200"),
    ] {
        assert_eq!(
            pg.psql("postgres", &format!("SHOW {setting}"))?,
            value,
            "{setting}"
        );
    }
    assert_eq!(
        pg.psql("postgres", "SHOW data_directory")?,
        pg.data_dir().to_string_lossy()
    );
    pg.create_database("kit_db")?;
    assert_eq!(pg.psql("kit_db", "SELECT current_database()")?, "kit_db");
    assert!(pg.create_database("bad name; DROP").is_err());
    // Run as root, the server runs as the `postgres` user; otherwise as ourselves.
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let owner = std::fs::metadata(pg.data_dir()).expect("data dir").uid();
    if me == 0 {
        assert_ne!(owner, 0, "the data directory belongs to postgres, not root");
    } else {
        assert_eq!(owner, me);
    }
    Ok(())
}

#[test]
fn committed_rows_survive_a_sigkill_and_crash_recovery() -> Result<(), KitError> {
    let mut pg = PgServer::start()?;
    pg.create_database("crash")?;
    pg.psql(
        "crash",
        "CREATE TABLE t (x int PRIMARY KEY); \
         INSERT INTO t SELECT generate_series(1, 1000)",
    )?;
    let port = pg.port();
    let old_pid = pg.pid();
    pg.kill()?;
    assert!(!pg.is_running());
    assert_eq!(pg.pid(), None);
    assert!(
        pg.psql("crash", "SELECT 1").is_err(),
        "a killed server answered"
    );
    assert!(pg.kill().is_ok(), "killing a dead server is a no-op");

    pg.restart()?;
    assert_eq!(pg.port(), port, "restart keeps the port");
    assert_ne!(pg.pid(), old_pid);
    assert_eq!(
        pg.psql("crash", "SELECT count(*), sum(x) FROM t")?,
        "1000|500500"
    );
    let log = pg.log_tail();
    assert!(
        log.contains("was not properly shut down") || log.contains("automatic recovery"),
        "the restart ran crash recovery:\n{log}"
    );
    // And again, with writes between the kills.
    pg.psql("crash", "INSERT INTO t VALUES (1001)")?;
    pg.restart()?;
    assert_eq!(pg.psql("crash", "SELECT max(x) FROM t")?, "1001");
    Ok(())
}

#[test]
fn drop_ends_every_process_and_removes_the_directory() -> Result<(), KitError> {
    let pg = PgServer::start()?;
    let dir = pg.dir().to_path_buf();
    let pid = pg.pid().expect("running");
    // A few backends besides the postmaster's own helpers.
    pg.psql("postgres", "SELECT 1")?;
    drop(pg);
    assert!(!dir.exists(), "{} is left", dir.display());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty(), "the postmaster {pid} is left: {stat}");
    Ok(())
}

/// A synchronous standby has every commit the primary acknowledged, refuses writes, and
/// once the primary is killed and it is promoted, has them still and accepts writes.
#[test]
fn a_synchronous_standby_is_promoted_with_every_acknowledged_commit() -> Result<(), KitError> {
    let mut primary = PgServer::start()?;
    primary.create_database("orders")?;
    primary.psql("orders", "CREATE TABLE t (x int PRIMARY KEY)")?;
    let standby = PgServer::standby_of(&primary)?;
    assert_ne!(standby.port(), primary.port());
    assert_ne!(standby.data_dir(), primary.data_dir());
    assert_eq!(
        primary.psql("postgres", "SHOW synchronous_standby_names")?,
        "*"
    );
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT application_name || ' ' || sync_state FROM pg_stat_replication"
        )?,
        format!("{} sync", pg_kit::server::STANDBY_NAME)
    );
    assert!(primary.is_primary()?);
    assert!(!standby.is_primary()?);
    // Acknowledged on the primary: on the standby already (synchronous commit).
    primary.psql("orders", "INSERT INTO t SELECT generate_series(1, 100)")?;
    primary.kill()?;
    assert!(
        standby.psql("orders", "INSERT INTO t VALUES (0)").is_err(),
        "a standby refuses writes"
    );
    standby.promote()?;
    assert!(standby.is_primary()?);
    assert_eq!(standby.psql("orders", "SELECT count(*) FROM t")?, "100");
    // Promoted, it commits alone (no standby of its own to wait for).
    standby.psql("orders", "INSERT INTO t VALUES (0)")?;
    assert_eq!(standby.psql("orders", "SELECT count(*) FROM t")?, "101");
    Ok(())
}
