//! `fnm-agent`: the daemon and its command-line clients.

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use fnm_agent::{client, config::Config};
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
    use fnm_agent::{
        bans::BanStore,
        dataplane::DataPlaneHandle,
        engine::{book::AttackBook, core::EngineCore, input, EngineHandle, EngineParts},
        mitigator::{self, bans::BanManager, store::MitigationStore},
    };
    let config = Arc::new(config);
    let state = &config.state_dir;
    // State first: a file that cannot be read stops start-up with its name, before anything
    // is attached.
    let bans = BanStore::open(&state.join("bans.json"))
        .context("reading the ban list (move it aside to start without it)")?;
    let store = MitigationStore::open(&state.join("mitigations.json"))?;
    let book = AttackBook::open(state.join("attacks.json"))?;

    let dataplane = if config.xdp_active() {
        let c = config.clone();
        tokio::task::spawn_blocking(move || load_dataplane(&c)).await??
    } else {
        DataPlaneHandle::absent()
    };
    let bans = BanManager::new(bans, dataplane.clone());
    // Saved bans go into the kernel before the program is attached (below), so a link taken
    // over from a previous agent never passes what that agent dropped.
    for (ban, e) in bans.reinstate() {
        tracing::error!(
            "reinstating the drop of {} ({}): {e}",
            ban.prefix,
            ban.match_on.as_str()
        );
    }
    let (mitigator, decisions) = mitigator::spawn(&config, bans, store).await?;

    let (engine_input, input_rx) = input::EngineInput::channel(input::INPUT_CAPACITY);
    let inputs = engine_input.stats();
    let sources = fnm_agent::sources::from_config(&config, &engine_input, &dataplane)?;
    drop(engine_input);
    let mut engine = EngineHandle::spawn(EngineParts {
        core: EngineCore::new(&config, book),
        input: input_rx,
        flushers: sources.flushers,
        decisions,
        interval: config.poll_interval,
    })
    .context("starting the engine thread")?;
    #[cfg(target_os = "linux")]
    if dataplane.is_present() {
        let (c, dp) = (config.clone(), dataplane.clone());
        tokio::task::spawn_blocking(move || attach_dataplane(&c, &dp)).await??;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("api.listen {}", config.api.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.prometheus.listen)
        .await
        .with_context(|| format!("prometheus.listen {}", config.prometheus.listen))?;
    tracing::info!(
        "API on http://{}, metrics on http://{}/metrics",
        config.api.listen,
        config.prometheus.listen
    );
    let api = tokio::spawn(fnm_agent::api::serve(
        fnm_agent::api::ApiState {
            engine: engine.client(),
            mitigator: mitigator.clone(),
            config: config.clone(),
            inputs: inputs.clone(),
        },
        api_listener,
        shutdown(stop_rx.clone()),
    ));
    let metrics = tokio::spawn(fnm_agent::metrics::serve(
        fnm_agent::metrics::MetricsState {
            engine: engine.client(),
            mitigator,
            inputs,
            extra: Arc::new(sources.metrics),
        },
        metrics_listener,
        shutdown(stop_rx.clone()),
    ));
    let running = sources.running;

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = api.await;
    let _ = metrics.await;
    tokio::task::spawn_blocking(move || {
        fnm_agent::sources::Sources {
            running,
            flushers: Vec::new(),
            metrics: Vec::new(),
        }
        .stop();
        engine.stop();
    })
    .await?;
    #[cfg(target_os = "linux")]
    if let Some(mut dp) = dataplane.lock() {
        dp.detach_all();
    }
    tracing::info!("detached; bye");
    Ok(())
}

/// Loads the XDP program (not attached yet).
#[cfg(target_os = "linux")]
fn load_dataplane(config: &Config) -> Result<fnm_agent::dataplane::DataPlaneHandle> {
    let dp = fnm_agent::xdp::DataPlane::load(&config.xdp, &config.networks, &config.whitelist)
        .context("loading the XDP program (are you root?)")?;
    Ok(fnm_agent::dataplane::DataPlaneHandle::new(dp))
}

#[cfg(not(target_os = "linux"))]
fn load_dataplane(_config: &Config) -> Result<fnm_agent::dataplane::DataPlaneHandle> {
    anyhow::bail!("the XDP data plane needs Linux; set xdp.enabled = false and use [capture]")
}

/// Attaches the loaded program to every configured interface. Attaching comes last: a link
/// pinned by a previous agent is taken over only once this program holds every ban and rule,
/// so nothing passes in between.
#[cfg(target_os = "linux")]
fn attach_dataplane(config: &Config, dp: &fnm_agent::dataplane::DataPlaneHandle) -> Result<()> {
    let Some(mut dp) = dp.lock() else {
        return Ok(());
    };
    let pin_dir = if config.xdp.pin_links {
        fnm_agent::xdp::ensure_bpffs(&config.xdp.pin_path)
            .context("mounting bpffs for pinned links")?;
        std::fs::create_dir_all(&config.xdp.pin_path)
            .with_context(|| format!("creating {}", config.xdp.pin_path.display()))?;
        Some(config.xdp.pin_path.as_path())
    } else {
        None
    };
    for interface in &config.xdp.interfaces {
        match dp.attach(interface, config.xdp.mode, pin_dir)? {
            fnm_agent::xdp::AttachMode::TakenOver => {
                tracing::info!("XDP on {interface}: took over the pinned link (no gap)")
            }
            mode => tracing::info!("XDP attached to {interface} in {} mode", mode.as_str()),
        }
    }
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
