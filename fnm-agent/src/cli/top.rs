//! `fnm-agent top`: a live full-screen view of a running agent, refreshed from its API.
//!
//! The screen shows the busiest hosts of one direction (packets/s, bits/s, flows/s and the
//! split by protocol), the attacks in progress, the mitigations in force and the sources'
//! health (records/s handed to the engine and any drops). Keys: `i`/`o` or Tab switch the
//! direction, `p`/`b`/`f` (or `s` to cycle) choose the sort, `q`, Esc or Ctrl-C quit.
//!
//! A fetcher thread polls the API (so a slow or unreachable agent never freezes the keys) and
//! hands complete refreshes to the drawing loop. The terminal is put back (raw mode off, main
//! screen back) on quit, on error and on panic. It needs nothing from the terminal but
//! ANSI sequences, so it works in any terminal emulator, tmux and over SSH.

use super::{units, ApiClient};
use crate::{
    accounting::Direction, detection::attack::Attack, mitigator::store::Mitigation, views::HostView,
};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
    Frame,
};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    sync::mpsc,
    time::{Duration, Instant},
};

/// What the host list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopSort {
    /// Packets per second.
    Pps,
    /// Bits per second.
    Bits,
    /// New flows per second.
    Flows,
}

impl TopSort {
    /// The API's name.
    pub fn api_name(self) -> &'static str {
        match self {
            TopSort::Pps => "pps",
            TopSort::Bits => "bytes_per_second",
            TopSort::Flows => "flows_per_second",
        }
    }

    /// As shown.
    pub fn label(self) -> &'static str {
        match self {
            TopSort::Pps => "packets/s",
            TopSort::Bits => "bits/s",
            TopSort::Flows => "flows/s",
        }
    }

    fn next(self) -> Self {
        match self {
            TopSort::Pps => TopSort::Bits,
            TopSort::Bits => TopSort::Flows,
            TopSort::Flows => TopSort::Pps,
        }
    }
}

impl std::str::FromStr for TopSort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match super::sort_param(s) {
            Some("pps") => Ok(TopSort::Pps),
            Some("bytes_per_second") => Ok(TopSort::Bits),
            Some("flows_per_second") => Ok(TopSort::Flows),
            _ => Err(format!("top sorts by pps, bits or flows, not {s:?}")),
        }
    }
}

/// How `top` starts.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Time between two refreshes.
    pub interval: Duration,
    /// The direction shown first.
    pub direction: Direction,
    /// The sort used first.
    pub sort: TopSort,
    /// Where the agent is, as shown in the title.
    pub target: String,
}

/// Why `top` could not run.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// Standard output is not a terminal.
    #[error("top needs a terminal (use `fnm-agent hosts` or `--json` commands in scripts)")]
    NotATerminal,
    /// The terminal could not be set up or drawn.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// One counter set of a source in `/api/v1/status`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct SourceCounters {
    /// Batches handed over.
    pub batches: u64,
    /// Records handed over.
    pub records: u64,
    /// Batches dropped (engine input full).
    pub dropped_batches: u64,
    /// Records dropped.
    pub dropped_records: u64,
}

/// The engine part of `/api/v1/status`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct EngineStatus {
    /// Ticks.
    pub ticks: u64,
    /// Slow ticks.
    pub overruns: u64,
    /// Decisions the mitigator's queue refused.
    pub decisions_dropped: u64,
}

/// What `top` reads of `/api/v1/status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Hosts known.
    pub hosts: u64,
    /// Most hosts kept.
    pub hosts_capacity: u64,
    /// New hosts refused by a full table, per source.
    pub hosts_table_full: BTreeMap<String, u64>,
    /// Per source.
    pub sources: BTreeMap<String, SourceCounters>,
    /// The engine.
    pub engine: EngineStatus,
    /// The XDP program's counters (absent without XDP).
    pub xdp: Option<serde_json::Value>,
}

/// One refresh from the API.
#[derive(Debug, Clone, Default)]
pub struct Refresh {
    /// The direction and sort it was fetched for.
    pub direction: Option<Direction>,
    /// See `direction`.
    pub sort: Option<TopSort>,
    /// The top hosts.
    pub hosts: Vec<HostView>,
    /// Attacks in progress.
    pub attacks: Vec<Attack>,
    /// Mitigations in force.
    pub mitigations: Vec<Mitigation>,
    /// The agent's status.
    pub status: Option<Status>,
    /// Seconds since the epoch when fetched.
    pub at: u64,
    /// When fetched (for rates of the sources' counters).
    pub instant: Option<Instant>,
    /// The first failure of this refresh.
    pub error: Option<String>,
}

/// Most hosts fetched per refresh (the screen shows as many as fit).
const HOST_LIMIT: usize = 200;

/// Fetches one refresh; a failing call leaves its part empty and records the error.
pub fn fetch(api: &ApiClient, direction: Direction, sort: TopSort) -> Refresh {
    let mut r = Refresh {
        direction: Some(direction),
        sort: Some(sort),
        at: units::now(),
        instant: Some(Instant::now()),
        ..Refresh::default()
    };
    let path = format!(
        "/api/v1/hosts?direction={}&sort={}&limit={HOST_LIMIT}",
        direction.as_str(),
        sort.api_name()
    );
    let mut fail = |e: super::CliError| {
        r.error.get_or_insert(e.to_string());
    };
    let hosts = api.get::<Vec<HostView>>(&path).map_err(&mut fail);
    let attacks = api
        .get::<Vec<Attack>>("/api/v1/attacks?ongoing=true")
        .map_err(&mut fail);
    let mitigations = api
        .get::<Vec<Mitigation>>("/api/v1/mitigations")
        .map_err(&mut fail);
    let status = api.get::<Status>("/api/v1/status").map_err(&mut fail);
    r.hosts = hosts.unwrap_or_default();
    r.attacks = attacks.unwrap_or_default();
    r.mitigations = mitigations.unwrap_or_default();
    r.status = status.ok();
    r
}

/// The screen's state: what is asked for and what was last fetched.
#[derive(Debug, Clone)]
pub struct TopState {
    /// Direction shown.
    pub direction: Direction,
    /// Sort used.
    pub sort: TopSort,
    /// Where the agent is.
    pub target: String,
    /// The last refresh.
    pub current: Option<Refresh>,
    /// The one before (the sources' rates are the difference).
    pub previous: Option<Refresh>,
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// Leave.
    Quit,
    /// The query changed: fetch again now.
    Refetch,
    /// Nothing to do.
    None,
}

impl TopState {
    /// A state before the first refresh.
    pub fn new(opts: &TopOptions) -> Self {
        Self {
            direction: opts.direction,
            sort: opts.sort,
            target: opts.target.clone(),
            current: None,
            previous: None,
        }
    }

    /// Applies a key.
    pub fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> KeyAction {
        let before = (self.direction, self.sort);
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return KeyAction::Quit,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => {
                return KeyAction::Quit
            }
            KeyCode::Char('i') => self.direction = Direction::Incoming,
            KeyCode::Char('o') => self.direction = Direction::Outgoing,
            KeyCode::Tab | KeyCode::Char('d') => {
                self.direction = match self.direction {
                    Direction::Incoming => Direction::Outgoing,
                    Direction::Outgoing => Direction::Incoming,
                }
            }
            KeyCode::Char('p') => self.sort = TopSort::Pps,
            KeyCode::Char('b') | KeyCode::Char('m') => self.sort = TopSort::Bits,
            KeyCode::Char('f') => self.sort = TopSort::Flows,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('r') => return KeyAction::Refetch,
            _ => {}
        }
        if (self.direction, self.sort) == before {
            KeyAction::None
        } else {
            KeyAction::Refetch
        }
    }

    /// Takes a refresh (one fetched for a query since changed is dropped).
    pub fn refreshed(&mut self, r: Refresh) {
        if r.direction != Some(self.direction) || r.sort != Some(self.sort) {
            return;
        }
        self.previous = self.current.take();
        self.current = Some(r);
    }

    /// Draws the whole screen.
    pub fn draw(&self, frame: &mut Frame<'_>) {
        let area = frame.area();
        let attacks = self.current.as_ref().map_or(0, |c| c.attacks.len());
        let mitigations = self.current.as_ref().map_or(0, |c| c.mitigations.len());
        let sources = self.source_rows().len();
        let [title, hosts, bottom, help] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(6),
            Constraint::Length(
                (attacks.max(mitigations).max(sources).max(1) as u16 + 3).min(area.height / 2),
            ),
            Constraint::Length(1),
        ])
        .areas(area);
        frame.render_widget(self.title(), title);
        self.draw_hosts(frame, hosts);
        let [left, middle, right] = Layout::horizontal([
            Constraint::Percentage(45),
            Constraint::Percentage(32),
            Constraint::Percentage(23),
        ])
        .areas(bottom);
        self.draw_attacks(frame, left);
        self.draw_mitigations(frame, middle);
        self.draw_sources(frame, right);
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                key("i/o/Tab"),
                Span::raw(" direction  "),
                key("p/b/f/s"),
                Span::raw(" sort by packets/bits/flows  "),
                key("r"),
                Span::raw(" refresh  "),
                key("q"),
                Span::raw(" quit"),
            ])),
            help,
        );
    }

    fn title(&self) -> Paragraph<'static> {
        let mut first = vec![Span::styled(
            "fnm-agent top",
            Style::default().add_modifier(Modifier::BOLD),
        )];
        first.push(Span::raw(format!("  {}", self.target)));
        let mut second = Vec::new();
        match &self.current {
            None => second.push(Span::raw("connecting...")),
            Some(c) => {
                if let Some(s) = &c.status {
                    first.push(Span::raw(format!(
                        "  v{}  up {}  hosts {}/{}",
                        s.version,
                        units::duration(s.uptime_seconds),
                        s.hosts,
                        s.hosts_capacity
                    )));
                }
                first.push(Span::raw(format!(
                    "  updated {}",
                    units::local_time(c.at)
                        .split(' ')
                        .nth(1)
                        .unwrap_or_default()
                )));
                match &c.error {
                    Some(e) => second.push(Span::styled(
                        format!("API error: {e}"),
                        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                    )),
                    None if c.attacks.is_empty() => second.push(Span::styled(
                        "no active attacks",
                        Style::default().fg(Color::Green),
                    )),
                    None => second.push(Span::styled(
                        format!("{} ACTIVE ATTACK(S)", c.attacks.len()),
                        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                    )),
                }
            }
        }
        Paragraph::new(vec![Line::from(first), Line::from(second)])
    }

    fn draw_hosts(&self, frame: &mut Frame<'_>, area: Rect) {
        let header = [
            "HOST",
            "PPS",
            "BITS/S",
            "FLOWS/S",
            "TCP PPS",
            "UDP PPS",
            "ICMP PPS",
            "OTHER PPS",
        ];
        let attacked: Vec<_> = self
            .current
            .iter()
            .flat_map(|c| c.attacks.iter())
            .filter(|a| a.direction == self.direction)
            .map(|a| a.host)
            .collect();
        let rows: Vec<Row<'_>> = self
            .current
            .iter()
            .flat_map(|c| c.hosts.iter())
            .map(|h| {
                let d = match self.direction {
                    Direction::Incoming => &h.incoming,
                    Direction::Outgoing => &h.outgoing,
                };
                let other = (d.pps - d.tcp_pps - d.udp_pps - d.icmp_pps).max(0.0);
                let row = Row::new(vec![
                    Cell::from(h.ip.to_string()),
                    right(units::pps(d.pps)),
                    right(units::bits_per_second(d.bytes_per_second)),
                    right(units::si(d.flows_per_second)),
                    right(units::pps(d.tcp_pps)),
                    right(units::pps(d.udp_pps)),
                    right(units::pps(d.icmp_pps)),
                    right(units::pps(other)),
                ]);
                if attacked.contains(&h.ip) {
                    row.style(Style::default().fg(Color::Red).add_modifier(Modifier::BOLD))
                } else {
                    row
                }
            })
            .collect();
        let empty = rows.is_empty();
        let title = format!(
            " Top hosts: {} (sorted by {}) ",
            self.direction.as_str(),
            self.sort.label()
        );
        let table = Table::new(
            rows,
            [
                // The longest IPv6 address; the spare width stays on the right.
                Constraint::Length(39),
                Constraint::Length(8),
                Constraint::Length(13),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(9),
            ],
        )
        .column_spacing(2)
        .flex(ratatui::layout::Flex::Start)
        .header(
            Row::new(header.iter().enumerate().map(|(i, h)| {
                if i == 0 {
                    Cell::from(*h)
                } else {
                    right(*h)
                }
            }))
            .style(Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED)),
        )
        .block(Block::default().borders(Borders::ALL).title(title));
        frame.render_widget(table, area);
        if empty && self.current.is_some() {
            let inner = Rect {
                x: area.x + 2,
                y: area.y + 2,
                width: area.width.saturating_sub(4),
                height: 1.min(area.height.saturating_sub(3)),
            };
            frame.render_widget(
                Paragraph::new(format!("no {} traffic seen yet", self.direction.as_str())),
                inner,
            );
        }
    }

    fn draw_attacks(&self, frame: &mut Frame<'_>, area: Rect) {
        let now = self.current.as_ref().map_or(0, |c| c.at);
        let lines: Vec<Line<'_>> = match &self.current {
            Some(c) if !c.attacks.is_empty() => c
                .attacks
                .iter()
                .map(|a| {
                    Line::from(format!(
                        "{} {} {} {} peak {} pps {}",
                        a.host,
                        if a.direction == Direction::Incoming {
                            "in"
                        } else {
                            "out"
                        },
                        a.fingerprint.attack_type.as_str(),
                        units::duration(now.saturating_sub(a.started_unix_ms / 1000)),
                        units::pps(a.peak_rates.pps),
                        units::bits_per_second(a.peak_rates.bytes_per_second),
                    ))
                    .style(Style::default().fg(Color::Red))
                })
                .collect(),
            _ => vec![Line::from("no active attacks")],
        };
        frame.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" Active attacks "),
            ),
            area,
        );
    }

    fn draw_mitigations(&self, frame: &mut Frame<'_>, area: Rect) {
        let now = self.current.as_ref().map_or(0, |c| c.at);
        let lines: Vec<Line<'_>> = match &self.current {
            Some(c) if !c.mitigations.is_empty() => c
                .mitigations
                .iter()
                .map(|m| {
                    Line::from(format!(
                        "{} {} {} {} {}",
                        m.prefix,
                        m.match_on.as_str(),
                        match m.origin {
                            crate::bans::BanOrigin::Detection => "auto",
                            crate::bans::BanOrigin::Manual => "manual",
                        },
                        m.actions
                            .iter()
                            .map(|a| a.action.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        if m.attack_ongoing && m.expires.is_some_and(|e| e <= now) {
                            "until it stops".into()
                        } else {
                            units::expiry(m.expires, now)
                        }
                    ))
                })
                .collect(),
            _ => vec![Line::from("no active mitigations")],
        };
        frame.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" Mitigations "),
            ),
            area,
        );
    }

    /// One line per source that handed anything over: name, records/s, health.
    fn source_rows(&self) -> Vec<(String, String, bool)> {
        let Some(cur) = self.current.as_ref() else {
            return Vec::new();
        };
        let Some(status) = cur.status.as_ref() else {
            return Vec::new();
        };
        let prev = self
            .previous
            .as_ref()
            .and_then(|p| Some((p.status.as_ref()?, p.instant?)));
        let mut rows = Vec::new();
        for (name, c) in &status.sources {
            if c.records == 0 && c.dropped_records == 0 {
                continue;
            }
            let (rate, dropping) = match (prev, cur.instant) {
                (Some((ps, pi)), Some(ci)) => {
                    let p = ps.sources.get(name).copied().unwrap_or_default();
                    let secs = ci.duration_since(pi).as_secs_f64().max(1e-3);
                    (
                        Some(c.records.saturating_sub(p.records) as f64 / secs),
                        c.dropped_records > p.dropped_records,
                    )
                }
                _ => (None, false),
            };
            let health = match rate {
                _ if dropping => "DROPPING".to_owned(),
                Some(r) if r > 0.0 => "ok".to_owned(),
                Some(_) => "idle".to_owned(),
                None => "...".to_owned(),
            };
            rows.push((
                name.clone(),
                format!(
                    "{} rec/s  {}",
                    rate.map_or_else(|| "-".into(), units::si),
                    health
                ),
                dropping,
            ));
        }
        let full: u64 = status.hosts_table_full.values().sum();
        if full > 0 {
            rows.push((
                "hosts".into(),
                format!("table full: {} refused", units::si(full as f64)),
                true,
            ));
        }
        if status.engine.overruns > 0 {
            rows.push((
                "engine".into(),
                format!("{} slow ticks", status.engine.overruns),
                false,
            ));
        }
        rows
    }

    fn draw_sources(&self, frame: &mut Frame<'_>, area: Rect) {
        let rows = self.source_rows();
        let lines: Vec<Line<'_>> = if rows.is_empty() {
            vec![Line::from("no records handed over yet")]
        } else {
            rows.into_iter()
                .map(|(name, text, bad)| {
                    let line = Line::from(format!("{name:<8} {text}"));
                    if bad {
                        line.style(Style::default().fg(Color::Yellow))
                    } else {
                        line
                    }
                })
                .collect()
        };
        frame.render_widget(
            Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Sources ")),
            area,
        );
    }
}

fn right<'a>(s: impl Into<String>) -> Cell<'a> {
    Cell::from(Line::from(s.into()).right_aligned())
}

fn key(k: &str) -> Span<'static> {
    Span::styled(
        k.to_owned(),
        Style::default().add_modifier(Modifier::REVERSED),
    )
}

/// Runs the live view until the operator quits.
pub fn run(api: ApiClient, opts: TopOptions) -> Result<(), TopError> {
    if !std::io::stdout().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    let mut state = TopState::new(&opts);
    let (query_tx, query_rx) = mpsc::channel::<(Direction, TopSort)>();
    let (refresh_tx, refresh_rx) = mpsc::channel::<Refresh>();
    let interval = opts.interval;
    // The fetcher: refreshes every interval, or at once when the query changes; ends when the
    // drawing loop drops its query sender.
    let fetcher = std::thread::Builder::new()
        .name("fnm-top-fetch".into())
        .spawn(move || {
            let (mut direction, mut sort) = (opts.direction, opts.sort);
            loop {
                if refresh_tx.send(fetch(&api, direction, sort)).is_err() {
                    return;
                }
                match query_rx.recv_timeout(interval) {
                    Ok(q) => {
                        (direction, sort) = q;
                        // Only the newest of several queued queries matters.
                        while let Ok(q) = query_rx.try_recv() {
                            (direction, sort) = q;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> Result<(), TopError> {
        loop {
            while let Ok(r) = refresh_rx.try_recv() {
                state.refreshed(r);
            }
            terminal.draw(|f| state.draw(f))?;
            if event::poll(Duration::from_millis(100))? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Release {
                        continue;
                    }
                    match state.key(k.code, k.modifiers) {
                        KeyAction::Quit => return Ok(()),
                        KeyAction::Refetch => {
                            let _ = query_tx.send((state.direction, state.sort));
                        }
                        KeyAction::None => {}
                    }
                }
            }
        }
    })();
    let restored = ratatui::try_restore();
    drop(query_tx);
    // The fetcher may be inside an API call (up to the client's timeouts): not waited for.
    drop(fetcher);
    result?;
    restored?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::{backend::TestBackend, Terminal};

    fn host(ip: &str, pps: f64, bytes_per_second: f64) -> HostView {
        let mut h: HostView = serde_json::from_value(serde_json::json!({
            "ip": ip,
            "incoming": {"packets": 0, "bytes": 0, "flows": 0,
                "tcp": {"packets": 0, "bytes": 0}, "udp": {"packets": 0, "bytes": 0},
                "icmp": {"packets": 0, "bytes": 0}, "other": {"packets": 0, "bytes": 0},
                "tcp_syn_packets": 0, "fragments": 0, "pps": 0.0, "bytes_per_second": 0.0,
                "flows_per_second": 0.0},
            "outgoing": {"packets": 0, "bytes": 0, "flows": 0,
                "tcp": {"packets": 0, "bytes": 0}, "udp": {"packets": 0, "bytes": 0},
                "icmp": {"packets": 0, "bytes": 0}, "other": {"packets": 0, "bytes": 0},
                "tcp_syn_packets": 0, "fragments": 0, "pps": 0.0, "bytes_per_second": 0.0,
                "flows_per_second": 0.0},
        }))
        .unwrap();
        h.incoming.pps = pps;
        h.incoming.udp_pps = pps;
        h.incoming.bytes_per_second = bytes_per_second;
        h.outgoing.pps = 3.0;
        h.outgoing.tcp_pps = 3.0;
        h
    }

    fn screen(state: &TopState) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
        t.draw(|f| state.draw(f)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn options() -> TopOptions {
        TopOptions {
            interval: Duration::from_secs(1),
            direction: Direction::Incoming,
            sort: TopSort::Pps,
            target: "127.0.0.1:9210".into(),
        }
    }

    #[test]
    fn the_screen_shows_hosts_with_units_and_says_what_is_empty() {
        let mut s = TopState::new(&options());
        assert!(screen(&s).contains("connecting..."));
        s.refreshed(Refresh {
            direction: Some(Direction::Incoming),
            sort: Some(TopSort::Pps),
            hosts: vec![host("10.0.0.9", 12_345.0, 1_250_000.0)],
            at: 1_700_000_000,
            ..Refresh::default()
        });
        let text = screen(&s);
        assert!(
            text.contains("Top hosts: incoming (sorted by packets/s)"),
            "{text}"
        );
        assert!(text.contains("10.0.0.9"), "{text}");
        assert!(text.contains("12.3k"), "{text}");
        assert!(text.contains("10.0 Mbit/s"), "{text}");
        assert!(text.contains("no active attacks"), "{text}");
        assert!(text.contains("no active mitigations"), "{text}");
    }

    #[test]
    fn keys_switch_direction_and_sort_and_stale_refreshes_are_dropped() {
        let mut s = TopState::new(&options());
        assert_eq!(
            s.key(KeyCode::Char('o'), KeyModifiers::NONE),
            KeyAction::Refetch
        );
        assert_eq!(s.direction, Direction::Outgoing);
        assert_eq!(
            s.key(KeyCode::Char('o'), KeyModifiers::NONE),
            KeyAction::None
        );
        assert_eq!(s.key(KeyCode::Tab, KeyModifiers::NONE), KeyAction::Refetch);
        assert_eq!(s.direction, Direction::Incoming);
        assert_eq!(
            s.key(KeyCode::Char('b'), KeyModifiers::NONE),
            KeyAction::Refetch
        );
        assert_eq!(s.sort, TopSort::Bits);
        assert_eq!(
            s.key(KeyCode::Char('s'), KeyModifiers::NONE),
            KeyAction::Refetch
        );
        assert_eq!(s.sort, TopSort::Flows);
        assert_eq!(
            s.key(KeyCode::Char('q'), KeyModifiers::NONE),
            KeyAction::Quit
        );
        assert_eq!(
            s.key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            KeyAction::Quit
        );
        // A refresh fetched for the old query never shows under the new title.
        s.refreshed(Refresh {
            direction: Some(Direction::Incoming),
            sort: Some(TopSort::Pps),
            hosts: vec![host("10.0.0.9", 1.0, 1.0)],
            ..Refresh::default()
        });
        assert!(s.current.is_none());
        s.refreshed(Refresh {
            direction: Some(Direction::Incoming),
            sort: Some(TopSort::Flows),
            ..Refresh::default()
        });
        let text = screen(&s);
        assert!(text.contains("(sorted by flows/s)"), "{text}");
        assert!(text.contains("no incoming traffic seen yet"), "{text}");
    }

    #[test]
    fn an_unreachable_agent_is_shown_not_fatal() {
        let api = ApiClient {
            addr: "127.0.0.1:1".parse().unwrap(),
            token: None,
        };
        let r = fetch(&api, Direction::Incoming, TopSort::Pps);
        assert!(
            r.error.as_deref().unwrap().contains("cannot reach"),
            "{r:?}"
        );
        let mut s = TopState::new(&options());
        s.refreshed(r);
        assert!(screen(&s).contains("API error: cannot reach"));
    }
}
