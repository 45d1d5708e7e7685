//! The mirror capture (`[xdp]`, `[capture]`) and the flow collectors (`[sflow]`, `[netflow]`).

use super::{atoi, Converter};
use std::net::IpAddr;

impl Converter<'_> {
    /// `[xdp]` and `[capture]` from the mirror settings.
    pub(super) fn capture(&mut self) {
        let afxdp = self.take_on("mirror_afxdp", false);
        let afpacket = self.take_on("mirror_afpacket", false);
        let netmap = self.take_on("mirror_netmap", false);
        let pcap = self.take_on("pcap", false);
        let interfaces: Vec<String> = self
            .take("interfaces")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.w.table("xdp");
        if afxdp {
            let native = self.take_on("force_native_mode_xdp", false);
            self.w.key(
                "enabled",
                true,
                "mirror_afxdp = on: fnm's XDP program counts the interfaces' packets in place \
                 (and passes them on), instead of FastNetMon's AF_XDP capture.",
            );
            self.w.key("interfaces", interfaces.clone(), "interfaces");
            self.w.key(
                "mode",
                if native { "native" } else { "auto" },
                &self.shown("force_native_mode_xdp", "off"),
            );
        } else {
            self.w.key(
                "enabled",
                false,
                "mirror_afxdp is off: no XDP data plane (turn it on with the interfaces that \
                 carry the traffic to count and drop in place).",
            );
            self.not_carried("force_native_mode_xdp", "mirror_afxdp is off");
        }
        for key in [
            "poll_mode_xdp",
            "xdp_set_promisc",
            "zero_copy_xdp",
            "microcode_xdp_path",
        ] {
            self.not_carried(
                key,
                "an AF_XDP capture setting: fnm's XDP program is built into the agent and \
                 counts in place (no AF_XDP socket, no microcode file)",
            );
        }
        for key in [
            "xdp_read_packet_length_from_ip_header",
            "af_packet_read_packet_length_from_ip_header",
            "netmap_read_packet_length_from_ip_header",
            "sflow_read_packet_length_from_ip_header",
        ] {
            self.not_carried(
                key,
                "fnm always takes a packet's length from its IP header (IPv4 total length, IPv6 \
                 payload + 40), as this option does when on",
            );
        }
        let userspace = if afpacket && !afxdp {
            Some((
                "pcap",
                "mirror_afpacket = on: libpcap, which captures through AF_PACKET",
            ))
        } else if netmap && !afxdp {
            Some(("netmap", "mirror_netmap = on"))
        } else if pcap && !afxdp {
            Some(("pcap", "pcap = on"))
        } else {
            None
        };
        if afxdp && (afpacket || netmap || pcap) {
            let t = "mirror_afxdp and another mirror capture are on: fnm counts with XDP only \
                     (one data plane per agent)"
                .to_owned();
            self.w.comment(&t);
            self.warn(t);
        }
        if let Some((backend, why)) = userspace {
            self.w.table("capture");
            self.w.key("backend", backend, why);
            self.w.key("interfaces", interfaces.clone(), "interfaces");
            self.w.key(
                "promiscuous",
                true,
                "FastNetMon captures in promiscuous mode",
            );
            let rate_key = if netmap && !afpacket {
                Some("netmap_sampling_ratio")
            } else if afpacket {
                Some("mirror_af_packet_custom_sampling_rate")
            } else {
                None
            };
            let rate = rate_key.map_or(1, |k| self.take(k).map_or(1, |v| atoi(&v).max(1)));
            if let (Some(rate_key), false) = (rate_key, rate != 1) {
                let shown = self.shown(rate_key, "1");
                self.w
                    .comment(&format!("{shown}: each captured packet counts once."));
            }
            if let (Some(rate_key), true) = (rate_key, rate != 1) {
                self.maybe_pending(
                    "capture.sampling_rate",
                    "sampling_rate",
                    rate as i64,
                    &format!("{rate_key}: each captured packet counts {rate} times"),
                );
            }
            if afpacket {
                let mode = self
                    .take("mirror_af_packet_fanout_mode")
                    .unwrap_or_else(|| "cpu".into());
                let threads = nproc.clamp(1, 64) as i64;
                self.maybe_pending(
                    "capture.threads",
                    "threads",
                    threads,
                    &format!(
                        "FastNetMon captures each interface on one thread per CPU through an \
                         AF_PACKET fanout group (mirror_af_packet_fanout_mode = {mode}); fnm's \
                         capture threads share a fanout group spread by flow hash"
                    ),
                );
            }
        }
        if afxdp || userspace.is_some() {
            for (key, on) in [
                ("mirror_afpacket", afpacket),
                ("mirror_netmap", netmap),
                ("pcap", pcap),
            ] {
                if !on {
                    self.not_carried(key, "off");
                }
            }
        } else {
            self.w.comment(
                "No mirror capture is on (mirror_afpacket, mirror_afxdp, mirror_netmap, pcap): \
                 none here either.",
            );
            if !interfaces.is_empty() {
                self.not_carried("interfaces", "no mirror capture is on");
            }
        }
        for key in [
            "mirror_af_packet_custom_sampling_rate",
            "netmap_sampling_ratio",
            "mirror_af_packet_fanout_mode",
        ] {
            if !self.used.contains(key) {
                self.not_carried(key, "its mirror capture is off");
            }
        }
        if self.conf.switch("mirror") == Some(true) {
            self.not_carried(
                "mirror",
                "PF_RING capture: fnm's is `[capture] backend = \"pfring\"` in a build with the \
                 pfring feature; not set here",
            );
        } else {
            self.not_carried("mirror", "PF_RING capture, off");
        }
    }

    /// `[sflow]` and `[netflow]`.
    pub(super) fn collectors(&mut self) {
        for (proto, port_key, host_key, section) in [
            ("sflow", "sflow_port", "sflow_host", "sflow"),
            ("netflow", "netflow_port", "netflow_host", "netflow"),
        ] {
            let on = self.take_on(proto, false);
            let ports = self.take(port_key).unwrap_or_default();
            let host = self.take(host_key).unwrap_or_else(|| "0.0.0.0".into());
            self.w.table(section);
            if !on {
                self.not_carried(port_key, format!("{proto} is off"));
                self.not_carried(host_key, format!("{proto} is off"));
                self.w.key(
                    "listen",
                    Vec::<String>::new(),
                    &format!("{proto} is off (FastNetMon's default when absent)"),
                );
                continue;
            }
            let ip: Option<IpAddr> = if host.is_empty() {
                Some(IpAddr::from([0, 0, 0, 0]))
            } else {
                host.parse().ok()
            };
            let ip = ip.unwrap_or_else(|| {
                let t = format!(
                    "{host_key} = {host}: not an IP address; fnm listens on 0.0.0.0 instead"
                );
                self.w.comment(&t);
                self.warn(t);
                IpAddr::from([0, 0, 0, 0])
            });
            let listen: Vec<String> = ports
                .split(',')
                .map(atoi)
                .filter(|p| (1..=65535).contains(p))
                .map(|p| std::net::SocketAddr::new(ip, p as u16).to_string())
                .collect();
            if listen.is_empty() {
                let t = format!(
                    "{proto} = on but {port_key} names no port: FastNetMon listens nowhere, \
                     neither does fnm"
                );
                self.w.comment(&t);
                self.warn(t);
            }
            self.w.key(
                "listen",
                listen,
                &format!("{proto} = on, {port_key} = {ports}, {host_key} = {host}"),
            );
            if proto == "netflow" {
                if let Some(rate) = self.take("netflow_sampling_ratio").map(|v| atoi(&v)) {
                    self.w.key(
                        "default_sampling_rate",
                        rate.max(1) as i64,
                        "netflow_sampling_ratio: for records whose exporter announces no rate \
                         (NetFlow v5 headers' rates are used, as in FastNetMon)",
                    );
                }
            }
        }
        if !self.used.contains("netflow_sampling_ratio") {
            self.not_carried("netflow_sampling_ratio", "netflow is off");
        }
    }
}
