//! `fnm-agent`: the daemon and its command-line clients.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use fnm_agent::{agent::Agent, client, config::Config};
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

#[derive(Parser)]
#[command(
    name = "fnm-agent",
    version,
    about = "fnm: DDoS detection and mitigation agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/fnm/fnm-agent.toml")]
        config: PathBuf,
    },
    /// Check a configuration file; exit 0 when valid.
    CheckConfig {
        /// Configuration file.
        path: PathBuf,
    },
    /// Print the default configuration.
    PrintDefaultConfig,
    /// List the busiest hosts of a running agent.
    Hosts {
        /// How many hosts.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// incoming | outgoing.
        #[arg(long, default_value = "incoming")]
        direction: String,
        /// pps | bps | flows_per_second | packets | bytes.
        #[arg(long, default_value = "pps")]
        sort: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run a capture file through the parser, accounting and detection; print the per-host
    /// summary and the attacks found (pcap timestamps drive the clock; nothing is banned).
    Replay {
        /// A pcap or pcapng file.
        file: PathBuf,
        /// Configuration (networks, thresholds); default: the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON: {"hosts": {...}, "attacks": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Print the thresholds and actions that apply to an address (from a config file).
    Thresholds {
        /// The address.
        ip: std::net::IpAddr,
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/fnm/fnm-agent.toml")]
        config: PathBuf,
    },
    /// List the attacks of a running agent (newest first).
    Attacks {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the bans of a running agent.
    Bans {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Ban a prefix on a running agent.
    Ban {
        /// Prefix or address, e.g. 198.51.100.7/32.
        prefix: String,
        /// Match the source (src) or destination (dst) address.
        #[arg(long = "match", value_parser = ["src", "dst"])]
        match_on: String,
        /// How long, e.g. 30m (default: until unbanned).
        #[arg(long)]
        duration: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Lift a ban on a running agent.
    Unban {
        /// Prefix or address.
        prefix: String,
        /// src | dst.
        #[arg(long = "match", value_parser = ["src", "dst"])]
        match_on: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// API address of the running agent.
    #[arg(long, default_value = "127.0.0.1:9210", env = "FNM_API")]
    api: SocketAddr,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { path } => {
            Config::load(&path)?;
            println!("{}: OK", path.display());
            Ok(())
        }
        Command::PrintDefaultConfig => {
            print!("{}", Config::default_toml());
            Ok(())
        }
        Command::Hosts {
            top,
            direction,
            sort,
            api,
        } => {
            let path = format!("/api/v1/hosts?direction={direction}&sort={sort}&limit={top}");
            let hosts = client::request(api.api, "GET", &path, None)?;
            print_hosts(&hosts, &direction);
            Ok(())
        }
        Command::Replay { file, config, json } => {
            let config = match config {
                Some(p) => Config::load(&p)?,
                None => Config::default(),
            };
            let report = fnm_agent::replay::replay(&file, &config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_replay(&report);
            }
            Ok(())
        }
        Command::Thresholds { ip, config } => {
            let config = Config::load(&config)?;
            let table = fnm_agent::detection::thresholds::ThresholdTable::new(
                &config.detection,
                &config.hostgroup,
            );
            let effective = table.lookup(ip);
            let actions = effective
                .actions
                .clone()
                .unwrap_or_else(|| config.ban.actions.clone());
            let out = serde_json::json!({
                "ip": ip,
                "hostgroup": effective.hostgroup,
                "prefix": effective.prefix,
                "incoming": effective.incoming,
                "outgoing": effective.outgoing,
                "actions": actions,
                "report_only": effective.report_only,
                "whitelisted": config.whitelist.iter().any(|w| w.contains(ip)),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Attacks { api } => {
            let attacks = client::request(api.api, "GET", "/api/v1/attacks", None)?;
            for a in attacks.as_array().into_iter().flatten() {
                println!(
                    "{}  {} {}  {}  peak {:.0} pps  {}  {}",
                    a["id"].as_str().unwrap_or("?"),
                    a["host"].as_str().unwrap_or("?"),
                    a["direction"].as_str().unwrap_or("?"),
                    a["fingerprint"]["attack_type"].as_str().unwrap_or("?"),
                    a["peak_rates"]["pps"].as_f64().unwrap_or(0.0),
                    if a["ended_unix_ms"].is_null() {
                        "ongoing"
                    } else {
                        "ended"
                    },
                    a["actions"],
                );
            }
            Ok(())
        }
        Command::Bans { api } => {
            let bans = client::request(api.api, "GET", "/api/v1/bans", None)?;
            print_bans(&bans);
            Ok(())
        }
        Command::Ban {
            prefix,
            match_on,
            duration,
            api,
        } => {
            let mut body = serde_json::json!({"prefix": normalise(&prefix), "match": match_on});
            if let Some(d) = duration {
                body["duration"] = d.into();
            }
            let ban = client::request(api.api, "POST", "/api/v1/bans", Some(&body))?;
            println!(
                "banned {} ({})",
                ban["prefix"].as_str().unwrap_or("?"),
                match_on
            );
            Ok(())
        }
        Command::Unban {
            prefix,
            match_on,
            api,
        } => {
            let path = format!(
                "/api/v1/bans/{}?match={match_on}",
                client::encode_segment(&normalise(&prefix))
            );
            client::request(api.api, "DELETE", &path, None)?;
            println!("unbanned {} ({match_on})", normalise(&prefix));
            Ok(())
        }
    }
}

/// Adds /32 or /128 to a bare address.
fn normalise(prefix: &str) -> String {
    if prefix.contains('/') {
        prefix.to_owned()
    } else if prefix.contains(':') {
        format!("{prefix}/128")
    } else {
        format!("{prefix}/32")
    }
}

fn print_hosts(hosts: &serde_json::Value, direction: &str) {
    println!(
        "{:<40} {:>12} {:>14} {:>10} {:>14} {:>16}",
        "host", "pps", "bytes/s", "flows/s", "packets", "bytes"
    );
    for h in hosts.as_array().into_iter().flatten() {
        let d = &h[direction];
        println!(
            "{:<40} {:>12.0} {:>14.0} {:>10.0} {:>14} {:>16}",
            h["ip"].as_str().unwrap_or("?"),
            d["pps"].as_f64().unwrap_or(0.0),
            d["bytes_per_second"].as_f64().unwrap_or(0.0),
            d["flows_per_second"].as_f64().unwrap_or(0.0),
            d["packets"].as_u64().unwrap_or(0),
            d["bytes"].as_u64().unwrap_or(0),
        );
    }
}

fn print_replay(r: &fnm_agent::replay::ReplayReport) {
    println!(
        "frames {}  ip {}  not ip {}  malformed {}",
        r.frames.total, r.frames.ip, r.frames.not_ip, r.frames.malformed
    );
    println!(
        "{:<40} {:>12} {:>14} {:>12} {:>14}",
        "host", "in packets", "in bytes", "out packets", "out bytes"
    );
    for (ip, h) in &r.hosts {
        println!(
            "{:<40} {:>12} {:>14} {:>12} {:>14}",
            ip.to_string(),
            h.incoming.packets,
            h.incoming.bytes,
            h.outgoing.packets,
            h.outgoing.bytes
        );
    }
    for a in &r.attacks {
        println!(
            "attack {} {} {}: {} {:.0} > {:.0}, peak {:.0} pps, type {}",
            a.id,
            a.host,
            a.direction.as_str(),
            a.threshold.rate,
            a.threshold.value,
            a.threshold.threshold,
            a.peak_rates.pps,
            a.fingerprint.attack_type
        );
    }
}

fn print_bans(bans: &serde_json::Value) {
    println!(
        "{:<44} {:<5} {:<10} {:>12} {:>14} {:>12}",
        "prefix", "match", "origin", "expires", "dropped pkts", "dropped bytes"
    );
    for b in bans.as_array().into_iter().flatten() {
        let expires = b["expires"]
            .as_u64()
            .map(|e| format!("in {}s", e.saturating_sub(fnm_agent::bans::unix_now())))
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<44} {:<5} {:<10} {:>12} {:>14} {:>12}",
            b["prefix"].as_str().unwrap_or("?"),
            b["match"].as_str().unwrap_or("?"),
            b["origin"].as_str().unwrap_or("?"),
            expires,
            b["dropped_packets"].as_u64().unwrap_or(0),
            b["dropped_bytes"].as_u64().unwrap_or(0),
        );
    }
}

fn run(config_path: PathBuf) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::load(&config_path)?;
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<()> {
    let agent = Agent::new(config)?;
    if agent.config.xdp_active() {
        let a = agent.clone();
        tokio::task::spawn_blocking(move || a.start_dataplane()).await??;
    }
    let capture_stop = fnm_agent::capture::StopFlag::new();
    let capture = if agent.config.capture.backend != fnm_agent::capture::BackendKind::Xdp {
        let mut backend = fnm_agent::capture::open(&agent.config.capture)?;
        tracing::info!(
            "capturing with {} on {:?}",
            backend.name(),
            agent.config.capture.interfaces
        );
        let (a, stop) = (agent.clone(), capture_stop.clone());
        Some(std::thread::spawn(move || {
            use fnm_agent::capture::batch;
            // Packets are coalesced per 5-tuple into records, which are added under one lock
            // of the accounting per batch. A batch stays open until the poll thread asks for
            // it just before each tick (so a slot's packets count in that slot), or at most
            // twice the poll interval (AGENT_MIN_FLUSH_INTERVAL at least) when nobody asks.
            let gate = a.capture_flush_gate();
            let hold = (a.config.poll_interval * 2).max(batch::AGENT_MIN_FLUSH_INTERVAL);
            let mut sink = batch::RecordBatcher::new(
                batch::AGENT_BATCH_CAPACITY,
                |records: &[fnm_agent::traffic::TrafficRecord]| {
                    a.accounting()
                        .ingest_batch(records, fnm_agent::traffic::Source::Pcap)
                },
            )
            .with_min_flush_interval(hold)
            .with_flush_gate(gate.clone());
            if let Err(e) = backend.run(&mut sink, &stop) {
                tracing::error!("capture stopped: {e}");
            }
            gate.detach();
            sink.flush_now();
        }))
    } else {
        None
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };

    let api_listener = tokio::net::TcpListener::bind(agent.config.api.listen)
        .await
        .with_context(|| format!("api.listen {}", agent.config.api.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(agent.config.prometheus.listen)
        .await
        .with_context(|| format!("prometheus.listen {}", agent.config.prometheus.listen))?;
    tracing::info!(
        "API on http://{}, metrics on http://{}/metrics",
        agent.config.api.listen,
        agent.config.prometheus.listen
    );
    let api = tokio::spawn(fnm_agent::api::serve(
        agent.clone(),
        api_listener,
        shutdown(stop_rx.clone()),
    ));
    let collectors = fnm_agent::flow::collector::FlowCollectors::start(
        &agent.config.sflow,
        &agent.config.netflow,
        Some(&agent.config.state_dir),
        agent.clone(),
    )?;
    let collector_metrics: Arc<dyn fnm_agent::metrics::MetricsSource> = collectors.metrics();
    let metrics = tokio::spawn(fnm_agent::metrics::serve(
        agent.clone(),
        vec![collector_metrics],
        metrics_listener,
        shutdown(stop_rx.clone()),
    ));
    let (poll_stop, poll_stop_rx) = std::sync::mpsc::channel::<()>();
    let poll = agent
        .clone()
        .spawn_poll_thread(poll_stop_rx)
        .context("starting the poll thread")?;

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    drop(poll_stop);
    let _ = tokio::task::spawn_blocking(move || poll.join()).await;
    let _ = api.await;
    let _ = metrics.await;
    capture_stop.stop();
    agent.capture_flush_gate().wake();
    if let Some(t) = capture {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    tokio::task::spawn_blocking(move || collectors.stop()).await?;
    let a: Arc<Agent> = agent.clone();
    tokio::task::spawn_blocking(move || a.stop_dataplane()).await?;
    tracing::info!("detached; bye");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
