#!/usr/bin/env python3
"""Writes capture files with encapsulated traffic of known per-host counts, for the replay test.

Usage: gen_pcaps.py OUTDIR

Writes vlan.pcap, qinq.pcap, mpls.pcap, l2tp.pcap, gre.pcap, ipip.pcap, ipv6ext.pcap and
mixed.pcapng, plus expected.json:
    {"<file>": {"<ip>": [packets, ip_bytes], ...}, ...}
where each packet counts once for its source and once for its destination, and only the
INNER IP packet of a tunnel is counted (its IP bytes: IPv4 total length, IPv6 payload
length + 40). Needs scapy (Debian: python3-scapy). Addresses are documentation/private
ranges; nothing is sent anywhere.
"""

import json
import os
import sys

from scapy.all import (
    AH, GRE, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPv6, IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, ICMPv6EchoRequest, PPP, Raw,
    fragment6, load_contrib, wrpcap, wrpcapng,
)
from scapy.contrib.mpls import MPLS
from scapy.layers.l2tp import L2TP

load_contrib("erspan")
from scapy.contrib.erspan import ERSPAN_II  # noqa: E402

OUTER_V4 = ("192.0.2.1", "192.0.2.2")
OUTER_V6 = ("2001:db8:ffff::1", "2001:db8:ffff::2")

files = {}
expected = {}


def emit(name, frame, counted):
    """Adds `frame` to capture `name`; `counted` is the IP layer the parser must count."""
    files.setdefault(name, []).append(frame)
    hosts = expected.setdefault(name, {})
    ip_bytes = len(bytes(counted))
    for host in (counted.src, counted.dst):
        entry = hosts.setdefault(host, [0, 0])
        entry[0] += 1
        entry[1] += ip_bytes


def eth():
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def inner_v4(i, proto="udp", size=0):
    ip = IP(src="10.10.%d.%d" % (i % 3, 1 + i % 5), dst="10.20.0.%d" % (1 + i % 2), ttl=50)
    pad = Raw(b"x" * size)
    if proto == "tcp":
        return ip / TCP(sport=40000 + i, dport=80, flags="S") / pad
    if proto == "icmp":
        return ip / ICMP(type=8) / pad
    return ip / UDP(sport=1000 + i, dport=53) / pad


def inner_v6(i, size=0):
    return IPv6(src="2001:db8:10::%x" % (1 + i % 4), dst="2001:db8:20::1") / UDP(sport=i, dport=443) / Raw(
        b"y" * size
    )


def build():
    for i in range(10):
        pkt = inner_v4(i, "udp", size=i * 7)
        emit("vlan.pcap", eth() / Dot1Q(vlan=10 + i) / pkt, pkt)
    for i in range(6):
        pkt = inner_v6(i, size=i * 3)
        emit("vlan.pcap", eth() / Dot1Q(vlan=20) / pkt, pkt)

    for i in range(8):
        pkt = inner_v4(i, "tcp", size=i)
        emit("qinq.pcap", eth() / Dot1AD(vlan=100) / Dot1Q(vlan=i + 1) / pkt, pkt)
    for i in range(4):
        pkt = inner_v6(i, size=100)
        emit("qinq.pcap", eth() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / pkt, pkt)

    for i in range(9):
        pkt = inner_v4(i, "icmp", size=i * 11)
        labels = MPLS(label=100 + i, s=0) / MPLS(label=16, s=1) if i % 2 else MPLS(label=16, s=1)
        emit("mpls.pcap", eth() / labels / pkt, pkt)
    for i in range(3):
        pkt = inner_v6(i)
        emit("mpls.pcap", eth() / MPLS(label=5, s=0) / MPLS(label=6, s=0) / MPLS(label=7, s=1) / pkt, pkt)

    for i in range(12):
        pkt = inner_v4(i, "tcp" if i % 2 else "udp", size=i * 13)
        frame = eth() / IP(src=OUTER_V4[0], dst=OUTER_V4[1]) / UDP(sport=1701, dport=1701) / L2TP(
            tunnel_id=1, session_id=2 + i
        ) / PPP() / pkt
        emit("l2tp.pcap", frame, pkt)
    for i in range(5):
        pkt = inner_v6(i, size=20)
        frame = eth() / IP(src=OUTER_V4[0], dst=OUTER_V4[1]) / UDP(sport=1701, dport=1701) / L2TP() / PPP(
            proto=0x57
        ) / pkt
        emit("l2tp.pcap", frame, pkt)

    for i in range(7):
        pkt = inner_v4(i, "udp", size=i)
        emit("gre.pcap", eth() / IP(src=OUTER_V4[0], dst=OUTER_V4[1]) / GRE() / pkt, pkt)
    for i in range(4):
        pkt = inner_v6(i)
        frame = eth() / IP(src=OUTER_V4[0], dst=OUTER_V4[1]) / GRE(key_present=1, key=42, proto=0x86DD) / pkt
        emit("gre.pcap", frame, pkt)
    for i in range(5):
        pkt = inner_v4(i, "tcp")
        frame = eth() / IPv6(src=OUTER_V6[0], dst=OUTER_V6[1]) / GRE(proto=0x6558) / eth() / Dot1Q(vlan=3) / pkt
        emit("gre.pcap", frame, pkt)
    for i in range(6):
        pkt = inner_v4(i, "icmp", size=30)
        frame = (
            eth() / IP(src=OUTER_V4[0], dst=OUTER_V4[1]) / GRE(seqnum_present=1, seqence_number=i, proto=0x88BE)
            / ERSPAN_II(ver=i % 2, session_id=9) / eth() / pkt
        )
        emit("gre.pcap", frame, pkt)

    for i in range(6):
        pkt = inner_v4(i, "udp", size=i * 2)
        emit("ipip.pcap", eth() / IP(src=OUTER_V4[0], dst=OUTER_V4[1]) / pkt, pkt)
    for i in range(3):
        pkt = inner_v6(i)
        emit("ipip.pcap", eth() / IP(src=OUTER_V4[0], dst=OUTER_V4[1]) / pkt, pkt)
    for i in range(3):
        pkt = inner_v4(i, "tcp")
        emit("ipip.pcap", eth() / IPv6(src=OUTER_V6[0], dst=OUTER_V6[1]) / pkt, pkt)

    src, dst = "2001:db8:30::1", "2001:db8:30::2"
    chains = [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8:30::9"]) / IPv6ExtHdrDestOpt(),
        IPv6ExtHdrDestOpt() / AH(spi=1, seq=1, icv=b"\0" * 12),
    ]
    for i, chain in enumerate(chains * 3):
        pkt = IPv6(src=src, dst=dst) / chain.copy() / TCP(sport=2000 + i, dport=22, flags="S")
        emit("ipv6ext.pcap", eth() / pkt, pkt)
    big = IPv6(src=src, dst="2001:db8:30::3") / IPv6ExtHdrFragment() / UDP(sport=9, dport=9) / Raw(b"z" * 3000)
    for frag in fragment6(big, 1280):
        emit("ipv6ext.pcap", eth() / frag, frag)
    for i in range(3):
        pkt = IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=i)
        emit("ipv6ext.pcap", eth() / pkt, pkt)

    # pcapng: a mix from the files above.
    mixed = files["vlan.pcap"][:3] + files["l2tp.pcap"][:3] + files["gre.pcap"][-3:]
    for name, take in (("vlan.pcap", slice(0, 3)), ("l2tp.pcap", slice(0, 3)), ("gre.pcap", slice(-3, None))):
        for frame in files[name][take]:
            counted = innermost_ip(frame)
            hosts = expected.setdefault("mixed.pcapng", {})
            for host in (counted.src, counted.dst):
                entry = hosts.setdefault(host, [0, 0])
                entry[0] += 1
                entry[1] += len(bytes(counted))
    return mixed


def innermost_ip(frame):
    layer, last = frame, None
    while layer is not None and layer.name != "NoPayload":
        if isinstance(layer, (IP, IPv6)):
            last = layer
        layer = layer.payload if layer.payload else None
    return last


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_pcaps.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    mixed = build()
    for name, frames in files.items():
        for n, f in enumerate(frames):
            f.time = 1_700_000_000 + n / 1000
        wrpcap(os.path.join(out, name), frames)
    wrpcapng(os.path.join(out, "mixed.pcapng"), mixed)
    with open(os.path.join(out, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
