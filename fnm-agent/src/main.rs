//! `fnm-agent`: the daemon and its command-line clients.

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};
use fnm_agent::{
    cli::{self, endpoint::ApiEndpoint, ApiClient},
    client,
    config::Config,
    preflight,
};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

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
    /// Check a configuration file against this machine (interfaces, notify script, actions
    /// and backends, hostgroups, state directory); exit 0 when the agent can start with it.
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = "/etc/fnm/fnm-agent.toml")]
        path: PathBuf,
        /// Also check that the peers answer (the BGP daemon, when an action announces routes).
        #[arg(long)]
        online: bool,
    },
    /// Print the default configuration.
    PrintDefaultConfig,
    /// Convert a FastNetMon 1.2.4 configuration to fnm's (printed on stdout): every option
    /// with an fnm equivalent, and, as comments at the end, the others with why.
    ImportFastnetmon {
        /// FastNetMon's configuration file.
        #[arg(default_value = "/etc/fastnetmon.conf")]
        path: PathBuf,
        /// Networks list to use instead of the file's networks_list_path.
        #[arg(long)]
        networks: Option<PathBuf>,
        /// Whitelist to use instead of the file's white_list_path.
        #[arg(long)]
        whitelist: Option<PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Manpage,
    /// List the busiest hosts of a running agent.
    Hosts {
        /// How many hosts.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// incoming | outgoing.
        #[arg(long, default_value = "incoming")]
        direction: fnm_agent::accounting::Direction,
        /// pps | bits (bits/s; also mbps, bps) | flows | conversations | packets | bytes.
        #[arg(long, default_value = "pps", value_parser = parse_sort)]
        sort: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Traffic per configured network and per hostgroup of a running agent.
    Networks {
        /// incoming | outgoing.
        #[arg(long, default_value = "incoming")]
        direction: fnm_agent::accounting::Direction,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A live full-screen view of a running agent: top hosts, attacks, mitigations, sources.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Direction shown first: incoming | outgoing.
        #[arg(long, default_value = "incoming")]
        direction: fnm_agent::accounting::Direction,
        /// Sort used first: pps | bits | flows.
        #[arg(long, default_value = "pps")]
        sort: cli::top::TopSort,
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
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the attacks of a running agent (newest first); `attacks show ID` for one report.
    Attacks {
        #[command(subcommand)]
        show: Option<AttacksCommand>,
        /// Only the attacks in progress.
        #[arg(long)]
        ongoing: bool,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the mitigations in force on a running agent (automatic and manual).
    Mitigations {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List manual bans and automatic mitigations of a running agent, with their drops.
    Bans {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
        /// A note kept with the ban (at most 1024 bytes).
        #[arg(long)]
        reason: Option<String>,
        /// Skip the safety checks (shortest prefix, own networks, whitelist supernets, this
        /// host's addresses); refused unless the agent has ban.allow_force = true.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Reload a running agent's configuration file (as SIGHUP does): thresholds, networks,
    /// actions, collectors, interfaces... without detaching XDP or losing counters or bans.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove the XDP links a stopped or crashed agent left pinned under xdp.pin_path (and
    /// their owner records): the program leaves the interface. Refuses an interface a running
    /// agent owns.
    Detach {
        /// Interfaces [default: every link pinned under xdp.pin_path].
        interfaces: Vec<String>,
        /// Configuration file (for xdp.pin_path) [default: /etc/fnm/fnm-agent.toml, else the
        /// built-in defaults].
        #[arg(long, short)]
        config: Option<PathBuf>,
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

/// `attacks` subcommands.
#[derive(Subcommand)]
enum AttacksCommand {
    /// The full report of one attack.
    Show {
        /// The attack's id (as `attacks` lists it).
        id: String,
        /// Print the API's JSON instead of the report.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// API of the running agent: host:port, a host name or address (port 9210) or
    /// http://host:port [default: api.listen of the config, else 127.0.0.1:9210].
    #[arg(long, env = "FNM_API")]
    api: Option<ApiEndpoint>,
    /// File holding the API's bearer token [default: api.token_file of the config].
    #[arg(long, env = "FNM_API_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The agent's configuration, read for api.listen and api.token_file [default:
    /// /etc/fnm/fnm-agent.toml when it exists].
    #[arg(long, short, env = "FNM_CONFIG")]
    config: Option<PathBuf>,
}

/// Where the CLI's default configuration is looked for.
const DEFAULT_CONFIG: &str = "/etc/fnm/fnm-agent.toml";

impl ApiArgs {
    /// The address and token to use: flags and environment first, then the configuration.
    fn resolve(&self) -> Result<ApiClient> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
                match Config::load(std::path::Path::new(DEFAULT_CONFIG)) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("note: not using {DEFAULT_CONFIG}: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let addr = match &self.api {
            Some(endpoint) => endpoint.resolve()?,
            None => config.as_ref().map_or_else(
                || SocketAddr::from(([127, 0, 0, 1], 9210)),
                |c| reachable(c.api.listen),
            ),
        };
        let token_file = self
            .token_file
            .clone()
            .or_else(|| config.as_ref().and_then(|c| c.api.token_file.clone()));
        let token = token_file
            .map(|p| fnm_agent::http::auth::Token::load(&p))
            .transpose()?;
        Ok(ApiClient {
            addr,
            token: token.map(|t| t.expose().to_owned()),
        })
    }
}

/// Checks `--sort` of `hosts`.
fn parse_sort(s: &str) -> Result<String, String> {
    cli::sort_param(s).map(|_| s.to_owned()).ok_or_else(|| {
        format!("sort by pps, bits, flows, conversations, packets or bytes, not {s:?}")
    })
}

/// The address to connect to for a listen address: a wildcard means this host's loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, listen.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // One line, each cause once; under systemd with the journal's error priority.
            let priority = if fnm_agent::logging::under_journald() {
                "<3>"
            } else {
                ""
            };
            let causes = e.chain().map(|c| c.to_string());
            eprintln!("{priority}fnm-agent: {}", fnm_agent::errors::join(causes));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { path, online } => check_config(&path, online),
        command => command_ok(command).map(|()| ExitCode::SUCCESS),
    }
}

/// `check-config`: the file, its tokens, then the machine (and the peers with `online`).
fn check_config(path: &std::path::Path, online: bool) -> Result<ExitCode> {
    let config = Config::load(path)?;
    load_token(&config.api.token_file, "api")?;
    load_token(&config.prometheus.token_file, "prometheus")?;
    let text = std::fs::read_to_string(path).ok();
    let mut report = preflight::check(&config, text.as_deref());
    if online {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting tokio")?;
        report.extend(runtime.block_on(preflight::check_online(&config)));
    }
    for finding in &report.findings {
        println!("{}: {finding}", finding.severity.as_str());
    }
    let errors = report.of(preflight::Severity::Error).count();
    let warnings = report.of(preflight::Severity::Warning).count();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if errors > 0 {
        println!(
            "{}: {} ({}): the agent would not start",
            path.display(),
            plural(errors, "error"),
            plural(warnings, "warning")
        );
        return Ok(ExitCode::FAILURE);
    }
    if warnings > 0 {
        println!("{}: OK ({})", path.display(), plural(warnings, "warning"));
    } else {
        println!("{}: OK", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn command_ok(command: Command) -> Result<()> {
    match command {
        Command::Run { config } => run(config),
        Command::CheckConfig { .. } => unreachable!("handled by dispatch"),
        Command::PrintDefaultConfig => {
            print!("{}", Config::default_toml());
            Ok(())
        }
        Command::ImportFastnetmon {
            path,
            networks,
            whitelist,
        } => {
            let options = fnm_agent::import::ImportOptions {
                networks,
                whitelist,
            };
            let imported = fnm_agent::import::import(&path, &options)?;
            for w in &imported.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", imported.toml);
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "fnm-agent",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpage => manpage(&mut std::io::stdout().lock()).context("writing the man page"),
        Command::Hosts {
            top,
            direction,
            sort,
            json,
            api,
        } => {
            print!(
                "{}",
                cli::hosts(&api.resolve()?, top, direction, &sort, json)?
            );
            Ok(())
        }
        Command::Networks {
            direction,
            json,
            api,
        } => {
            let out = cli::networks::networks(&api.resolve()?, direction, json)?;
            print!("{out}");
            Ok(())
        }
        Command::Top {
            interval,
            direction,
            sort,
            api,
        } => {
            if !(0.1..=3600.0).contains(&interval) {
                anyhow::bail!("--interval must be between 0.1 and 3600 seconds");
            }
            let api = api.resolve()?;
            let target = api.addr.to_string();
            cli::top::run(
                api,
                cli::top::TopOptions {
                    interval: std::time::Duration::from_secs_f64(interval),
                    direction,
                    sort,
                    target,
                },
            )?;
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
        Command::Thresholds { ip, config, json } => {
            let config = Config::load(&config)?;
            print!("{}", cli::thresholds(&config, ip, json)?);
            Ok(())
        }
        Command::Attacks {
            show,
            ongoing,
            json,
            api,
        } => {
            let out = match show {
                Some(AttacksCommand::Show {
                    id,
                    json: show_json,
                    api: show_api,
                }) => {
                    let api = if show_api.api.is_some()
                        || show_api.config.is_some()
                        || show_api.token_file.is_some()
                    {
                        show_api
                    } else {
                        api
                    };
                    cli::attack_show(&api.resolve()?, &id, json || show_json)?
                }
                None => cli::attacks(&api.resolve()?, ongoing, json)?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Mitigations { json, api } => {
            print!("{}", cli::mitigations(&api.resolve()?, json)?);
            Ok(())
        }
        Command::Bans { json, api } => {
            print!("{}", cli::bans(&api.resolve()?, json)?);
            Ok(())
        }
        Command::Ban {
            prefix,
            match_on,
            duration,
            reason,
            force,
            api,
        } => {
            let mut body = serde_json::json!({"prefix": normalise(&prefix), "match": match_on});
            if let Some(d) = duration {
                body["duration"] = d.into();
            }
            if let Some(r) = reason {
                body["reason"] = r.into();
            }
            if force {
                body["force"] = true.into();
            }
            let ban = api
                .resolve()?
                .request("POST", "/api/v1/bans", Some(&body))?;
            println!(
                "banned {} ({})",
                ban["prefix"].as_str().unwrap_or("?"),
                match_on
            );
            Ok(())
        }
        Command::Reload { api } => {
            let outcome = api.resolve()?.request("POST", "/api/v1/reload", None)?;
            println!("{}", fnm_agent::reload::describe(&outcome));
            Ok(())
        }
        Command::Detach { interfaces, config } => detach(&interfaces, config),
        Command::Unban {
            prefix,
            match_on,
            api,
        } => {
            let path = format!(
                "/api/v1/bans/{}?match={match_on}",
                client::encode_segment(&normalise(&prefix))
            );
            api.resolve()?.request("DELETE", &path, None)?;
            println!("unbanned {} ({match_on})", normalise(&prefix));
            Ok(())
        }
    }
}

/// The man page: clap's (synopsis, commands, options), then the files, environment and where
/// the rest is documented.
fn manpage(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap_mangen::roff::{bold, roman, Roff};
    clap_mangen::Man::new(Cli::command())
        .section("8")
        .manual("fnm")
        .render(out)?;
    let mut roff = Roff::default();
    let item = |roff: &mut Roff, term: &str, text: &str| {
        roff.control("TP", []);
        roff.text([bold(term)]);
        roff.text([roman(text)]);
    };
    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "Each command describes its arguments with --help, e.g. fnm-agent check-config --help.",
    )]);
    roff.control("SH", ["FILES"]);
    item(
        &mut roff,
        DEFAULT_CONFIG,
        "The configuration (fnm-agent print-default-config prints the default, with every key \
         explained).",
    );
    item(
        &mut roff,
        "/var/lib/fnm",
        "state_dir: bans, mitigations, attacks and flow templates, kept across restarts.",
    );
    item(
        &mut roff,
        "/sys/fs/bpf/fnm",
        "xdp.pin_path: the pinned XDP links, which keep counting and dropping if the agent dies.",
    );
    roff.control("SH", ["ENVIRONMENT"]);
    item(
        &mut roff,
        "FNM_API, FNM_API_TOKEN_FILE, FNM_CONFIG",
        "Where the commands that talk to a running agent find it, its token and its config.",
    );
    item(
        &mut roff,
        "RUST_LOG",
        "Overrides [log] level, e.g. RUST_LOG=info,fnm_agent::flow=debug.",
    );
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), journalctl(1); /usr/share/doc/fnm-agent/operations.md (install, service, \
         logs, checking a config) and README.md (API, metrics).",
    )]);
    roff.to_writer(out)
}

/// `fnm-agent detach`: removes pinned links whose agent is gone.
fn detach(interfaces: &[String], config: Option<PathBuf>) -> Result<()> {
    let config = match config {
        Some(path) => Config::load(&path)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG))?
        }
        None => Config::default(),
    };
    let pin_path = &config.xdp.pin_path;
    let results = fnm_agent::attach::detach_pinned(&config, interfaces);
    if results.is_empty() {
        println!("no XDP link is pinned under {}", pin_path.display());
    }
    let mut failed = 0;
    for (interface, result) in results {
        match result {
            Ok(fnm_agent::attach::Detached::Removed) => println!(
                "{interface}: detached (removed {})",
                pin_path
                    .join(fnm_agent::ownership::pin_name(&interface))
                    .display()
            ),
            Ok(fnm_agent::attach::Detached::NothingPinned) => {
                println!("{interface}: nothing pinned under {}", pin_path.display())
            }
            Err(e) => {
                eprintln!("{interface}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} interface(s) not detached");
    }
    Ok(())
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

fn run(config_path: PathBuf) -> Result<()> {
    let config = Config::load(&config_path)?;
    fnm_agent::logging::init(&config.log);
    // What check-config finds stops the start here, before anything is bound or attached.
    let text = std::fs::read_to_string(&config_path).ok();
    let report = preflight::check(&config, text.as_deref());
    for finding in report.of(preflight::Severity::Warning) {
        tracing::warn!("{finding}");
    }
    let errors: Vec<String> = report
        .of(preflight::Severity::Error)
        .map(|f| f.to_string())
        .collect();
    if !errors.is_empty() {
        anyhow::bail!(
            "{} is not usable on this host (`fnm-agent check-config` says the same): {}",
            config_path.display(),
            errors.join("; ")
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(run_async(config, config_path))
}

async fn run_async(config: Config, config_path: PathBuf) -> Result<()> {
    use fnm_agent::{
        bans::BanStore,
        dataplane::DataPlaneHandle,
        engine::{book::AttackBook, core::EngineCore, input, EngineHandle, EngineParts},
        mitigator::{self, bans::BanManager, store::MitigationStore},
    };
    let config = Arc::new(config);
    // SIGHUP reloads from now on (its default action would end the agent).
    let mut signals = Signals::new()?;
    // Tokens and exposure first: nothing starts with a listener it should not have.
    let servers = http_servers(&config)?;
    check_descriptors(&config);
    let state = &config.state_dir;
    // One agent per state directory and per interface: a second one stops here, before it
    // touches anything the first one uses.
    let _state_lock = fnm_agent::ownership::StateLock::acquire(state)?;
    fnm_agent::attach::check_owners(&config)?;
    // State first: a file that cannot be read stops start-up with its name, before anything
    // is attached.
    let bans = BanStore::open(&state.join("bans.json"))
        .context("reading the ban list (move it aside to start without it)")?;
    let store = MitigationStore::open(&state.join("mitigations.json"))?;
    let book = AttackBook::open(state.join("attacks.json"))?;
    // The ports next: a port in use stops start-up before XDP is attached to anything.
    let api_listener = fnm_agent::http::bind(config.api.listen)
        .with_context(|| format!("api.listen {}", config.api.listen))?;
    let metrics_listener = fnm_agent::http::bind(config.prometheus.listen)
        .with_context(|| format!("prometheus.listen {}", config.prometheus.listen))?;

    let dataplane = if config.xdp_active() {
        let c = config.clone();
        tokio::task::spawn_blocking(move || load_dataplane(&c)).await??
    } else {
        DataPlaneHandle::absent()
    };
    let bans = BanManager::new(bans, dataplane.clone());
    // Saved bans go into the kernel before the program is attached (below), so a link taken
    // over from a previous agent never passes what that agent dropped.
    let failed = bans.reinstate();
    for (ban, e) in failed.iter().take(10) {
        tracing::error!(
            "reinstating the drop of {} ({}): {e}",
            ban.prefix,
            ban.match_on.as_str()
        );
    }
    if !failed.is_empty() {
        tracing::error!(
            "{} of {} saved bans are NOT dropping (listed, not in the kernel; manual, permanent \
             and newest bans went in first); raise xdp.max_drop_entries (now {}) or unban some",
            failed.len(),
            bans.list().count(),
            config.xdp.max_drop_entries
        );
    }
    let (mitigator, decisions) = mitigator::spawn(&config, bans, store).await?;

    let (engine_input, input_rx) = input::EngineInput::channel(input::INPUT_CAPACITY);
    let inputs = engine_input.stats();
    let mut sources = fnm_agent::sources::from_config(&config, &engine_input, &dataplane)?;
    let sites = fnm_agent::sources::start_fleet(&config, &engine_input, &mut sources)
        .context("starting the aggregator's Kafka consumer")?;
    if sites.is_some() {
        tracing::info!(
            "aggregator: reading {} as a member of consumer group {}",
            config.kafka.topic("hosts"),
            config.cluster.group_id
        );
    }
    let (mut exporter, observers) =
        match fnm_agent::export::Exporter::start(&config.export, &config.kafka)
            .context("starting the export")?
        {
            Some((exporter, observer)) => {
                if config.export.kafka {
                    tracing::info!(
                        "exporting to Kafka ({}), topics {}.hosts/.attacks/.mitigations/.flows",
                        config.kafka.brokers.join(", "),
                        config.kafka.topic_prefix
                    );
                }
                if let Some(ch) = &config.export.clickhouse {
                    tracing::info!(
                        "exporting to ClickHouse at {}, database {}",
                        ch.url,
                        ch.database
                    );
                }
                let observers: Vec<Box<dyn fnm_agent::engine::TickObserver>> =
                    vec![Box::new(observer)];
                (Some(exporter), observers)
            }
            None => (None, Vec::new()),
        };
    let export_stats = exporter
        .as_ref()
        .map(|e| e.stats.clone())
        .unwrap_or_default();
    let mut engine = EngineHandle::spawn(EngineParts {
        core: {
            let mut core = EngineCore::new(&config, book)
                .with_mitigations(mitigator.view.clone())
                .with_attack_pcap(&config);
            if exporter.is_some() {
                core = core.with_flow_sampling(&config.export);
            }
            match sites {
                Some(s) => core.with_site_shares(s),
                None => core,
            }
        },
        input: input_rx,
        flushers: sources.flushers,
        observers,
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
    tracing::info!(
        "API on http://{}, metrics on http://{}/metrics",
        config.api.listen,
        config.prometheus.listen
    );
    let map_memory = Arc::new(fnm_agent::summary::MapMemoryMetric::default());
    log_summary(&config, &dataplane, &map_memory);
    let shared_config: fnm_agent::reload::SharedConfig =
        Arc::new(arc_swap::ArcSwap::from(config.clone()));
    let reload_stats = Arc::new(fnm_agent::reload::ReloadStats::default());
    reload_stats.loaded_now();
    let flow_metrics = Arc::new(fnm_agent::reload::SwappableMetrics::default());
    if let Some(f) = &sources.flows {
        flow_metrics.set(f.metrics());
    }
    let mut reloader = fnm_agent::reload::Reloader::new(fnm_agent::reload::ReloaderParts {
        path: config_path,
        config: shared_config.clone(),
        engine: engine.client(),
        mitigator: mitigator.clone(),
        dataplane: dataplane.clone(),
        input: engine_input,
        flows: sources.flows.take(),
        flow_metrics: flow_metrics.clone(),
        stats: reload_stats.clone(),
    });
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(8);
    let mut extra = sources.metrics;
    extra.push(flow_metrics);
    extra.push(reload_stats);
    extra.push(map_memory);
    if !export_stats.is_empty() {
        extra.push(Arc::new(fnm_agent::export::ExportMetrics(
            export_stats.clone(),
        )));
    }
    let api = tokio::spawn(fnm_agent::api::serve(
        fnm_agent::api::ApiState {
            engine: engine.client(),
            mitigator: mitigator.clone(),
            config: shared_config,
            reload: Some(reload_tx),
            inputs: inputs.clone(),
            export: export_stats,
        },
        api_listener,
        servers.api.clone(),
        shutdown(stop_rx.clone()),
    ));
    let metrics = tokio::spawn(fnm_agent::metrics::serve(
        fnm_agent::metrics::MetricsState {
            engine: engine.client(),
            mitigator,
            inputs,
            extra: Arc::new(extra),
            http: Arc::new(vec![
                ("api", servers.api.stats.clone()),
                ("metrics", servers.metrics.stats.clone()),
            ]),
        },
        metrics_listener,
        servers.metrics.clone(),
        shutdown(stop_rx.clone()),
    ));
    let running = sources.running;
    fnm_agent::service::ready();
    let watchdog = fnm_agent::service::watchdog_interval().map(|every| {
        let engine = engine.client();
        tokio::spawn(fnm_agent::service::watchdog(every, move || {
            engine.snapshot().ticks
        }))
    });

    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reloader.reload().await;
                }
            },
            Some(reply) = reload_rx.recv() => {
                let outcome = reloader.reload().await;
                let _ = reply.send(outcome);
            }
        }
    }
    fnm_agent::service::stopping();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = api.await;
    let _ = metrics.await;
    let flows = reloader.take_flows();
    let config = reloader.config.load_full();
    drop(reloader);
    tokio::task::spawn_blocking(move || {
        fnm_agent::sources::Sources {
            running,
            flushers: Vec::new(),
            metrics: Vec::new(),
            flows,
        }
        .stop();
        engine.stop();
        // After the engine: its last tick's messages are in the queue.
        if let Some(e) = exporter.as_mut() {
            e.stop(std::time::Duration::from_secs(2));
        }
    })
    .await?;
    fnm_agent::attach::detach_all(&dataplane, &config);
    tracing::info!("detached; bye");
    Ok(())
}

/// Logs what the agent counts, detects, does and listens to, and what its XDP maps take.
fn log_summary(
    config: &Config,
    dataplane: &fnm_agent::dataplane::DataPlaneHandle,
    map_memory: &fnm_agent::summary::MapMemoryMetric,
) {
    use fnm_agent::summary;
    #[cfg(target_os = "linux")]
    let maps: Option<Vec<summary::MapBytes>> = dataplane.lock().map(|dp| {
        dp.map_memory()
            .into_iter()
            .map(|m| summary::MapBytes {
                name: m.name,
                bytes: m.bytes,
            })
            .collect()
    });
    #[cfg(not(target_os = "linux"))]
    let maps: Option<Vec<summary::MapBytes>> = {
        let _ = dataplane;
        None
    };
    for line in summary::lines(config, maps.as_deref()) {
        if line == summary::NO_THRESHOLDS {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
    if let Some(maps) = &maps {
        let total = maps.iter().map(|m| m.bytes).sum();
        map_memory.set(total);
        if let Some(w) = summary::memory_warning(total, summary::memory_total()) {
            tracing::warn!("{w}");
        }
    }
}

/// Reads a listener's token file, warning when others may read it.
fn load_token(
    path: &Option<PathBuf>,
    section: &str,
) -> Result<Option<fnm_agent::http::auth::Token>> {
    let Some(path) = path else { return Ok(None) };
    let token = fnm_agent::http::auth::Token::load(path)
        .with_context(|| format!("{section}.token_file"))?;
    if fnm_agent::http::auth::readable_by_others(path) {
        tracing::warn!(
            "{section}.token_file {} can be read by other users; chmod 600 it",
            path.display()
        );
    }
    Ok(Some(token))
}

/// The two HTTP listeners' options.
struct HttpServers {
    api: fnm_agent::http::ServerOptions,
    metrics: fnm_agent::http::ServerOptions,
}

/// Loads the tokens and decides who may call what; warns loudly about a listener reachable
/// beyond loopback without a token (the configuration allowed it with `insecure = true`).
fn http_servers(config: &Config) -> Result<HttpServers> {
    use fnm_agent::http::{auth::Auth, HttpStats, ServerOptions};
    let api_token = load_token(&config.api.token_file, "api")?;
    let metrics_token = load_token(&config.prometheus.token_file, "prometheus")?;
    let api_exposed = !config.api.listen.ip().is_loopback();
    let metrics_exposed = !config.prometheus.listen.ip().is_loopback();
    if api_exposed && api_token.is_none() {
        tracing::warn!(
            "!!! INSECURE: api.listen {} is reachable beyond this host and has NO TOKEN \
             (api.insecure = true): anyone who reaches it can ban, unban and read every host's \
             traffic. Set api.token_file. !!!",
            config.api.listen
        );
    }
    if metrics_exposed && metrics_token.is_none() {
        tracing::warn!(
            "!!! INSECURE: prometheus.listen {} is reachable beyond this host and has NO TOKEN \
             (prometheus.insecure = true): anyone who reaches it can read which hosts are \
             attacked. Set prometheus.token_file. !!!",
            config.prometheus.listen
        );
    }
    let (api_stats, metrics_stats) = (
        Arc::new(HttpStats::default()),
        Arc::new(HttpStats::default()),
    );
    Ok(HttpServers {
        api: ServerOptions {
            name: "api",
            limits: config.api.limits(),
            auth: Auth::new(api_token, api_exposed, api_stats.clone()),
            stats: api_stats,
        },
        metrics: ServerOptions {
            name: "metrics",
            limits: config.prometheus.limits(),
            auth: Auth::new(metrics_token, true, metrics_stats.clone()),
            stats: metrics_stats,
        },
    })
}

/// File descriptors the agent uses besides its HTTP connections (collectors, BPF maps, state
/// files, scripts, BGP sessions), for the start-up check.
const OTHER_DESCRIPTORS: u64 = 256;

/// Warns when the descriptor limit cannot hold both listeners' connections and the rest.
fn check_descriptors(config: &Config) {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and has no other effect.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return;
        }
        let needed = (config.api.max_connections + config.prometheus.max_connections) as u64
            + OTHER_DESCRIPTORS;
        // rlim_t is u64 on Linux and macOS but i64 on FreeBSD.
        #[allow(clippy::unnecessary_cast)]
        let current = lim.rlim_cur as u64;
        if current < needed {
            tracing::warn!(
                "the file descriptor limit is {} but api.max_connections and \
                 prometheus.max_connections with the agent's own files need about {needed}: \
                 raise LimitNOFILE or lower the connection limits",
                current
            );
        }
    }
    #[cfg(not(unix))]
    let _ = config;
}

/// Loads the XDP program (not attached yet).
#[cfg(target_os = "linux")]
fn load_dataplane(config: &Config) -> Result<fnm_agent::dataplane::DataPlaneHandle> {
    let mut dp = fnm_agent::xdp::DataPlane::load(&config.xdp, &config.networks, &config.whitelist)
        .context("loading the XDP program (are you root?)")?;
    dp.set_whitelist_sources(&config.detection.whitelist_sources)
        .context("filling the XDP source whitelist ([detection] whitelist_sources)")?;
    Ok(fnm_agent::dataplane::DataPlaneHandle::new(dp))
}

#[cfg(not(target_os = "linux"))]
fn load_dataplane(_config: &Config) -> Result<fnm_agent::dataplane::DataPlaneHandle> {
    anyhow::bail!("the XDP data plane needs Linux; set xdp.enabled = false and use [capture]")
}

/// Attaches the loaded program to every configured interface. Attaching comes last: a link
/// pinned by a previous agent is taken over only once this program holds every ban and rule,
/// so nothing passes in between (and only when that agent is gone: see `ownership`).
#[cfg(target_os = "linux")]
fn attach_dataplane(config: &Config, dp: &fnm_agent::dataplane::DataPlaneHandle) -> Result<()> {
    for interface in &config.xdp.interfaces {
        match fnm_agent::attach::attach(dp, config, interface)? {
            fnm_agent::xdp::AttachMode::TakenOver => tracing::info!(
                "XDP on {interface}: took over the pinned link of an agent that is gone (no gap)"
            ),
            mode => tracing::info!("XDP attached to {interface} in {} mode", mode.as_str()),
        }
    }
    Ok(())
}

/// What the agent is asked to do by a signal.
enum Signal {
    /// SIGTERM or SIGINT: stop cleanly.
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
}

/// The signals the agent handles, registered once at start.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
                hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = self.term.recv() => Signal::Stop,
                _ = self.hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9210".parse().unwrap()),
            "127.0.0.1:9210".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:9210".parse().unwrap()),
            "[::1]:9210".parse().unwrap()
        );
        assert_eq!(
            reachable("192.0.2.1:9210".parse().unwrap()),
            "192.0.2.1:9210".parse().unwrap()
        );
    }
}
