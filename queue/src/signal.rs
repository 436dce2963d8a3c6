//! The shutdown signal every long-running binary of the system waits for (`queue serve`,
//! `gateway`, `order-worker`): SIGTERM, as a service manager sends, or SIGINT (Ctrl-C).

/// Completes at the first SIGTERM or SIGINT. If the SIGTERM handler cannot be installed,
/// only SIGINT ends the wait.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
