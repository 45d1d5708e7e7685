//! ExaBGP 4.x backend: writes text API commands to ExaBGP's command pipe.
//!
//! Tested with Debian's exabgp 4.2.21. ExaBGP's CLI control (`exabgp.api.cli = true`, the default)
//! reads commands from the FIFO `<dir>/<pipename>.in`, where `<dir>` is the first of `/run/exabgp/`,
//! `/run/`, `/var/run/exabgp/`, `/var/run/`, `<root>/run/` … holding both `<pipename>.in` and
//! `<pipename>.out` FIFOs when exabgp starts (`<pipename>` is `exabgp.api.pipename`, default
//! `exabgp`). So with the default `exabgp_pipe = "/run/exabgp.in"`:
//!
//! ```text
//! mkfifo -m 600 /run/exabgp.in /run/exabgp.out   # before starting exabgp
//! ```
//!
//! Commands go to every neighbour of that exabgp. Its replies (`done`/`error`) go to
//! `exabgp.out`, which fnm does not read; rejected commands are in exabgp's log. Any other reader
//! of a FIFO works too, e.g. an exabgp `process` running `cat` on a FIFO opened read-write.
//!
//! Every command is one line written in a single `write` of at most `PIPE_BUF` bytes, so
//! concurrent writers never interleave. The pipe is opened non-blocking for each command: when
//! exabgp is not running, the open fails at once (no reader), and a stuck exabgp fails the write
//! after the configured timeout instead of blocking the agent.

use super::{flowspec, BgpConfig, BgpError, Community, FlowspecRule};
use crate::prefix::Prefix;
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};
use tokio::io::AsyncWriteExt;

/// Longest command written: Linux's `PIPE_BUF`, the size of an atomic FIFO write.
pub const MAX_COMMAND_LEN: usize = 4096;

/// Announces through ExaBGP's command pipe.
#[derive(Debug, Clone)]
pub struct ExabgpAnnouncer {
    pipe: PathBuf,
    next_hop: Ipv4Addr,
    next_hop_v6: Ipv6Addr,
    communities: Vec<Community>,
    timeout: Duration,
}

impl ExabgpAnnouncer {
    /// An announcer writing to `config.exabgp_pipe`; opens nothing until the first command.
    pub fn new(config: &BgpConfig) -> Self {
        Self {
            pipe: config.exabgp_pipe.clone(),
            next_hop: config.next_hop,
            next_hop_v6: config.next_hop_v6,
            communities: config.communities.clone(),
            timeout: config.timeout,
        }
    }

    /// Announces `prefix` with the blackhole next hop and communities.
    pub async fn announce_blackhole(&self, prefix: Prefix) -> Result<(), BgpError> {
        self.announce_blackhole_with(prefix, &self.communities)
            .await
    }

    /// Announces `prefix` with the blackhole next hop and `communities`.
    pub async fn announce_blackhole_with(
        &self,
        prefix: Prefix,
        communities: &[Community],
    ) -> Result<(), BgpError> {
        let command = blackhole_command("announce", prefix, self.next_hop_for(prefix), communities);
        self.send(&command).await
    }

    /// Withdraws the blackhole route of `prefix`.
    pub async fn withdraw_blackhole(&self, prefix: Prefix) -> Result<(), BgpError> {
        let command = blackhole_command("withdraw", prefix, self.next_hop_for(prefix), &[]);
        self.send(&command).await
    }

    /// Announces a flowspec rule.
    pub async fn announce_flowspec(&self, rule: &FlowspecRule) -> Result<(), BgpError> {
        rule.validate()?;
        self.send(&flow_command("announce", rule)).await
    }

    /// Withdraws a flowspec rule announced before.
    pub async fn withdraw_flowspec(&self, rule: &FlowspecRule) -> Result<(), BgpError> {
        rule.validate()?;
        self.send(&flow_command("withdraw", rule)).await
    }

    fn next_hop_for(&self, prefix: Prefix) -> String {
        if prefix.is_ipv4() {
            self.next_hop.to_string()
        } else {
            self.next_hop_v6.to_string()
        }
    }

    /// Opens the command pipe for writing, without writing: that succeeds only while a reader
    /// (exabgp) has it open.
    pub async fn probe(&self) -> Result<String, BgpError> {
        let open = async {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(&self.pipe)
                .map_err(|source| BgpError::ExabgpPipe {
                    path: self.pipe.clone(),
                    source,
                })
        };
        match tokio::time::timeout(self.timeout, open).await {
            Ok(sender) => drop(sender?),
            Err(_) => return Err(BgpError::Timeout(self.timeout)),
        }
        Ok(format!("exabgp reads {}", self.pipe.display()))
    }

    /// Writes one command line to the pipe, bounded by the timeout.
    async fn send(&self, command: &str) -> Result<(), BgpError> {
        let mut line = String::with_capacity(command.len() + 1);
        line.push_str(command);
        line.push('\n');
        if line.len() > MAX_COMMAND_LEN {
            return Err(BgpError::CommandTooLong(line.len()));
        }
        let pipe_error = |source| BgpError::ExabgpPipe {
            path: self.pipe.clone(),
            source,
        };
        let write = async {
            let mut sender = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(&self.pipe)
                .map_err(pipe_error)?;
            sender.write_all(line.as_bytes()).await.map_err(pipe_error)
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(result) => result,
            Err(_) => Err(BgpError::Timeout(self.timeout)),
        }?;
        tracing::debug!(pipe = %self.pipe.display(), command, "sent exabgp command");
        Ok(())
    }
}

/// `announce route 198.51.100.7/32 next-hop 192.0.2.254 origin igp community [65535:666]`, or the
/// matching `withdraw` (communities empty).
pub fn blackhole_command(
    verb: &str,
    prefix: Prefix,
    next_hop: String,
    communities: &[Community],
) -> String {
    let mut command = format!(
        "{verb} route {}/{} next-hop {next_hop}",
        prefix.addr(),
        prefix.len()
    );
    if verb == "announce" {
        command.push_str(" origin igp");
    }
    let standard: Vec<String> = communities
        .iter()
        .filter(|c| matches!(c, Community::Standard { .. }))
        .map(Community::to_string)
        .collect();
    let large: Vec<String> = communities
        .iter()
        .filter(|c| matches!(c, Community::Large { .. }))
        .map(Community::to_string)
        .collect();
    if !standard.is_empty() {
        let _ = write!(command, " community [{}]", standard.join(" "));
    }
    if !large.is_empty() {
        let _ = write!(command, " large-community [{}]", large.join(" "));
    }
    command
}

/// `announce flow route { match { destination ...; source-port [ =53 ]; protocol [ =17 ]; } then
/// { discard; } }`, or the matching `withdraw`.
pub fn flow_command(verb: &str, rule: &FlowspecRule) -> String {
    let mut text = format!("{verb} flow route {{ match {{ ");
    let _ = write!(
        text,
        "destination {}/{}; ",
        rule.destination.addr(),
        rule.destination.len()
    );
    if let Some(source) = rule.source {
        let _ = write!(text, "source {}/{}; ", source.addr(), source.len());
    }
    if let Some(protocol) = rule.protocol {
        let keyword = if rule.destination.is_ipv4() {
            "protocol"
        } else {
            "next-header"
        };
        let _ = write!(text, "{keyword} [ ={protocol} ]; ");
    }
    if !rule.source_ports.is_empty() {
        let _ = write!(
            text,
            "source-port [ {} ]; ",
            numeric(&flowspec::range_terms(&rule.source_ports))
        );
    }
    if !rule.destination_ports.is_empty() {
        let _ = write!(
            text,
            "destination-port [ {} ]; ",
            numeric(&flowspec::range_terms(&rule.destination_ports))
        );
    }
    if let Some(flags) = rule.tcp_flags {
        let terms: Vec<String> = flowspec::tcp_flag_terms(flags)
            .into_iter()
            .map(|term| {
                let operator = if term.set { "=" } else { "!" };
                format!("{operator}{}", flowspec::tcp_flag_name(term.flag))
            })
            .collect();
        let _ = write!(text, "tcp-flags [ {} ]; ", terms.join("&"));
    }
    if let Some(range) = rule.packet_length {
        let _ = write!(
            text,
            "packet-length [ {} ]; ",
            numeric(&flowspec::range_terms(&[range]))
        );
    }
    if let Some(fragment) = rule.fragment {
        let _ = write!(text, "fragment [ {} ]; ", fragment.exabgp_name());
    }
    text.push_str("} then { ");
    match rule.action {
        flowspec::FlowspecAction::Discard => text.push_str("discard; "),
        flowspec::FlowspecAction::RateLimit { bytes_per_second } => {
            let _ = write!(text, "rate-limit {bytes_per_second}; ");
        }
    }
    text.push_str("} }");
    text
}

/// ExaBGP's numeric list: ORed terms separated by spaces, ANDed ones joined with `&`.
fn numeric(terms: &[flowspec::NumericTerm]) -> String {
    let mut text = String::new();
    for term in terms {
        if term.and {
            text.push('&');
        } else if !text.is_empty() {
            text.push(' ');
        }
        let operator = match term.comparison {
            flowspec::Comparison::Equal => "=",
            flowspec::Comparison::AtLeast => ">=",
            flowspec::Comparison::AtMost => "<=",
        };
        let _ = write!(text, "{operator}{}", term.value);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::bgp::{FlowspecAction, FragmentMatch, TcpFlagsMatch, ValueRange};

    fn prefix(text: &str) -> Prefix {
        text.parse().expect("prefix")
    }

    #[test]
    fn blackhole_commands_carry_next_hop_and_communities() {
        let communities = [
            Community::BLACKHOLE,
            Community::Large {
                global: 64512,
                local1: 1,
                local2: 2,
            },
        ];
        assert_eq!(
            blackhole_command(
                "announce",
                prefix("198.51.100.7/32"),
                "192.0.2.254".into(),
                &communities
            ),
            "announce route 198.51.100.7/32 next-hop 192.0.2.254 origin igp \
             community [65535:666] large-community [64512:1:2]"
        );
        assert_eq!(
            blackhole_command("withdraw", prefix("2001:db8::7/128"), "100::1".into(), &[]),
            "withdraw route 2001:db8::7/128 next-hop 100::1"
        );
    }

    #[test]
    fn flow_command_lists_every_component() {
        let mut rule =
            FlowspecRule::to_destination(prefix("198.51.100.7/32"), FlowspecAction::Discard);
        rule.source = Some(prefix("203.0.113.0/24"));
        rule.protocol = Some(17);
        rule.source_ports = vec![
            ValueRange::single(53),
            ValueRange {
                first: 1000,
                last: 2000,
            },
        ];
        rule.packet_length = Some(ValueRange {
            first: 512,
            last: 1500,
        });
        rule.fragment = Some(FragmentMatch::IsFragment);
        assert_eq!(
            flow_command("announce", &rule),
            "announce flow route { match { destination 198.51.100.7/32; source 203.0.113.0/24; \
             protocol [ =17 ]; source-port [ =53 >=1000&<=2000 ]; packet-length [ >=512&<=1500 ]; \
             fragment [ is-fragment ]; } then { discard; } }"
        );
    }

    #[test]
    fn ipv6_flow_uses_next_header_and_flags() {
        let mut rule = FlowspecRule::to_destination(
            prefix("2001:db8::7/128"),
            FlowspecAction::RateLimit {
                bytes_per_second: 125_000,
            },
        );
        rule.protocol = Some(6);
        rule.destination_ports = vec![ValueRange::single(80)];
        rule.tcp_flags = Some(TcpFlagsMatch {
            set: 0x02,
            clear: 0x10,
        });
        assert_eq!(
            flow_command("withdraw", &rule),
            "withdraw flow route { match { destination 2001:db8::7/128; next-header [ =6 ]; \
             destination-port [ =80 ]; tcp-flags [ =syn&!ack ]; } then { rate-limit 125000; } }"
        );
    }

    #[tokio::test]
    async fn missing_reader_fails_at_once_instead_of_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("exabgp.in");
        let path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("c path");
        // SAFETY: `path` is a valid NUL-terminated string.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let config = BgpConfig {
            exabgp_pipe: fifo,
            timeout: Duration::from_secs(30),
            ..BgpConfig::default()
        };
        let announcer = ExabgpAnnouncer::new(&config);
        let started = std::time::Instant::now();
        let result = announcer
            .announce_blackhole(prefix("198.51.100.7/32"))
            .await;
        assert!(
            matches!(result, Err(BgpError::ExabgpPipe { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        let missing = ExabgpAnnouncer::new(&BgpConfig {
            exabgp_pipe: dir.path().join("absent.in"),
            ..BgpConfig::default()
        });
        assert!(missing
            .withdraw_blackhole(prefix("198.51.100.7/32"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn full_pipe_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("exabgp.in");
        let path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("c path");
        // SAFETY: `path` is a valid NUL-terminated string.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        // A reader that never reads: the pipe fills up and the next write must time out.
        let _reader = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&fifo)
            .expect("reader");
        let announcer = ExabgpAnnouncer::new(&BgpConfig {
            exabgp_pipe: fifo,
            timeout: Duration::from_millis(200),
            ..BgpConfig::default()
        });
        let started = std::time::Instant::now();
        let mut outcome = Ok(());
        for _ in 0..10_000 {
            outcome = announcer
                .announce_blackhole(prefix("198.51.100.7/32"))
                .await;
            if outcome.is_err() {
                break;
            }
        }
        assert!(matches!(outcome, Err(BgpError::Timeout(_))), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
