//! A primary, a replica and one Sentinel: the Sentinel promotes the replica when the
//! primary is SIGKILLed.

use std::time::{Duration, Instant};

use redis_kit::{KitError, SentinelSetup, info_field};

#[test]
fn the_replica_takes_over_when_the_primary_is_killed() -> Result<(), KitError> {
    let mut setup = SentinelSetup::start()?;
    for port in [
        setup.primary().port(),
        setup.replica().port(),
        setup.sentinel().port(),
    ] {
        assert_ne!(port, 6379);
    }
    assert_eq!(setup.master_addr()?, setup.primary_addr());
    let repl = setup.replica().info("replication")?;
    assert_eq!(info_field(&repl, "role"), Some("slave"));
    assert_eq!(
        info_field(&repl, "master_port"),
        Some(setup.primary().port().to_string().as_str())
    );

    // Written on the primary and acknowledged by the replica before the kill.
    let mut conn = setup.primary().connect()?;
    conn.cmd(&["SET", "k", "before the failover"])?;
    assert_eq!(conn.cmd(&["WAIT", "1", "5000"])?.as_int(), Some(1));

    let killed = setup.kill_primary()?;
    assert_eq!(killed, setup.primary_addr());
    let started = Instant::now();
    let new_master = setup.wait_for_failover(Duration::from_secs(30))?;
    eprintln!("sentinel failover in {:?}", started.elapsed());
    assert_eq!(
        new_master,
        setup.replica_addr(),
        "the former replica is the new master"
    );
    assert_eq!(setup.master_addr()?, setup.replica_addr());
    let repl = setup.replica().info("replication")?;
    assert_eq!(info_field(&repl, "role"), Some("master"));
    assert_eq!(
        setup.replica().cmd(&["GET", "k"])?.as_str(),
        Some("before the failover")
    );
    // The new master takes writes.
    setup.replica().cmd(&["SET", "k", "after"])?;
    Ok(())
}
