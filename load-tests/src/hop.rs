//! `load-tests hop`: what one proxy hop costs (issue 17). The same closed loop of `GET
//! PATH` (default `/healthz`, a trivial route) against a gateway directly and through a
//! proxy in front of it (nginx), in alternating rounds of the same length in one run, so
//! both sides see the same machine; prints a JSON summary with the ratio of the two.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::{LoadResult, LoadSpec, closed_loop, request};
use serde_json::{Value, json};

/// Most rounds per side.
pub const ROUNDS_MAX: u32 = 20;
/// Longest round, s.
pub const ROUND_SECS_MAX: u64 = 60;
/// Warm-up of each round (connections open, caches warm), not counted.
pub const ROUND_WARMUP: Duration = Duration::from_millis(500);

/// `load-tests hop`'s flags.
#[derive(Debug, clap::Args)]
pub struct HopArgs {
    /// The gateway itself (loopback).
    #[arg(long)]
    direct: String,
    /// The proxy in front of it (loopback).
    #[arg(long)]
    via: String,
    /// The path both are asked for (a trivial route measures the hop, not the route).
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Connections of each closed loop.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Length of each measured round, s.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Rounds per side, alternating direct and via.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Also write the JSON summary here.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

fn addr(url: &str, flag: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--{flag} {url}: only http:// URLs"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let a: SocketAddr = hostport
        .parse()
        .map_err(|e| format!("--{flag} {url}: {e} (an IP address and port)"))?;
    if !a.ip().is_loopback() {
        return Err(format!("--{flag} {url}: loopback addresses only"));
    }
    Ok(a)
}

async fn round(target: SocketAddr, args: &HopArgs) -> Result<LoadResult, String> {
    let path = args.path.clone();
    closed_loop(
        LoadSpec {
            addr: target,
            connections: args.connections,
            warmup: ROUND_WARMUP,
            measure: Duration::from_secs(args.secs),
        },
        move |_| request("GET", &path, &[], None),
    )
    .await
    .map_err(|e| format!("{target}: {e}"))
}

/// The summary of both sides.
fn summary(args: &HopArgs, direct: &LoadResult, via: &LoadResult) -> Value {
    json!({
        "benchmark": "hop",
        "path": args.path,
        "connections": args.connections,
        "rounds": args.rounds,
        "round_secs": args.secs,
        "direct": direct.summary(),
        "via": via.summary(),
        "rps_ratio_via_over_direct": via.rps() / direct.rps().max(1e-9),
        "p50_added_ms": via.quantile_ms(0.50) - direct.quantile_ms(0.50),
        "p99_added_ms": via.quantile_ms(0.99) - direct.quantile_ms(0.99),
    })
}

/// Runs `load-tests hop`: exit 0 when both sides answered, 2 when the run could not go on.
pub async fn run_cli(args: HopArgs) -> std::process::ExitCode {
    match run(&args).await {
        Ok(v) => {
            println!("{v}");
            if let Some(out) = &args.json_out
                && let Err(e) = std::fs::write(out, format!("{v:#}\n"))
            {
                eprintln!("load-tests hop: writing {}: {e}", out.display());
                return std::process::ExitCode::from(2);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load-tests hop: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: &HopArgs) -> Result<Value, String> {
    let direct_addr = addr(&args.direct, "direct")?;
    let via_addr = addr(&args.via, "via")?;
    if !(1..=ROUNDS_MAX).contains(&args.rounds) {
        return Err(format!("--rounds is 1..={ROUNDS_MAX}"));
    }
    if !(1..=ROUND_SECS_MAX).contains(&args.secs) {
        return Err(format!("--secs is 1..={ROUND_SECS_MAX}"));
    }
    let (mut direct, mut via): (Option<LoadResult>, Option<LoadResult>) = (None, None);
    for r in 0..args.rounds {
        // Alternate which side goes first, so neither always runs on a warmer machine.
        let order = if r % 2 == 0 {
            [(direct_addr, true), (via_addr, false)]
        } else {
            [(via_addr, false), (direct_addr, true)]
        };
        for (target, is_direct) in order {
            let got = round(target, args).await?;
            let side = if is_direct { &mut direct } else { &mut via };
            match side {
                Some(acc) => acc.merge(&got),
                None => *side = Some(got),
            }
        }
    }
    let (Some(direct), Some(via)) = (direct, via) else {
        return Err("no round ran".into());
    };
    if direct.requests == 0 || via.requests == 0 {
        return Err(format!(
            "a side answered nothing (direct {}, via {})",
            direct.requests, via.requests
        ));
    }
    Ok(summary(args, &direct, &via))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_addresses_are_taken() {
        assert!(addr("http://127.0.0.1:80/x", "via").is_ok());
        assert!(addr("https://127.0.0.1:80", "via").is_err());
        assert!(addr("http://10.0.0.1:80", "via").is_err());
        assert!(addr("http://example.com:80", "via").is_err());
    }
}
