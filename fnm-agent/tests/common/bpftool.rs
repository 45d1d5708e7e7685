//! The kernel's own view of an agent's XDP maps, through `bpftool` (Debian package `bpftool`):
//! find the maps of the program attached to an interface, read an IPv4 drop table, and change
//! it behind the agent's back (delete an entry, freeze the map) to force data-plane errors.
#![allow(dead_code)]

use super::netns::NetnsPair;
use std::{net::Ipv4Addr, process::Command};

/// Runs bpftool; its stdout, or an error with everything it said.
fn bpftool(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .map_err(|e| format!("bpftool (Debian package bpftool) must be installed: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bpftool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn bpftool_json(args: &[&str]) -> Result<serde_json::Value, String> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = bpftool(&full)?;
    serde_json::from_slice(&out).map_err(|e| format!("bpftool {}: not JSON ({e})", args.join(" ")))
}

/// Id of the XDP program attached to `dev` in namespace `ns`.
pub fn xdp_prog_id(ns: &str, dev: &str) -> u64 {
    let out = NetnsPair::exec(ns, &["ip", "-j", "-d", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link show");
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no XDP program on {dev} in {ns}: {v:#}"))
}

/// Id of the map called `name` (as the kernel keeps it: at most 15 characters) that the XDP
/// program on `dev` in `ns` uses. Ids are global, names are not: going through the program
/// finds this agent's map and no other test's.
pub fn agent_map_id(ns: &str, dev: &str, name: &str) -> u64 {
    let prog = xdp_prog_id(ns, dev).to_string();
    let info = bpftool_json(&["prog", "show", "id", &prog]).expect("bpftool prog show");
    let ids: Vec<u64> = info["map_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("program {prog} lists no maps: {info:#}"))
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    let short: String = name.chars().take(15).collect();
    for id in &ids {
        let map = bpftool_json(&["map", "show", "id", &id.to_string()]).expect("bpftool map show");
        if map["name"] == short.as_str() {
            return *id;
        }
    }
    panic!("program {prog} has no map {short} among {ids:?}");
}

/// The key of a /`len` IPv4 prefix in an LPM trie (prefix length in host order, then the
/// address), as bpftool's `key hex` arguments.
fn lpm_v4_key(addr: Ipv4Addr, len: u32) -> Vec<String> {
    len.to_ne_bytes()
        .iter()
        .chain(addr.octets().iter())
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The prefixes in IPv4 LPM trie `map_id`, as `a.b.c.d/len`.
pub fn lpm_v4_prefixes(map_id: u64) -> Vec<String> {
    let dump = bpftool_json(&["map", "dump", "id", &map_id.to_string()]).expect("bpftool dump");
    let byte = |v: &serde_json::Value| {
        u8::from_str_radix(v.as_str().unwrap_or("").trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("key byte {v}"))
    };
    dump.as_array()
        .expect("a dump is a list")
        .iter()
        .map(|entry| {
            let key: Vec<u8> = entry["key"]
                .as_array()
                .expect("key")
                .iter()
                .map(byte)
                .collect();
            assert_eq!(key.len(), 8, "an IPv4 LPM key: {entry}");
            let len = u32::from_ne_bytes(key[..4].try_into().unwrap());
            format!("{}.{}.{}.{}/{len}", key[4], key[5], key[6], key[7])
        })
        .collect()
}

/// Deletes the /`len` entry of `addr` from IPv4 LPM trie `map_id`.
pub fn lpm_v4_delete(map_id: u64, addr: Ipv4Addr, len: u32) -> Result<(), String> {
    let id = map_id.to_string();
    let key = lpm_v4_key(addr, len);
    let mut args = vec!["map", "delete", "id", &id, "key", "hex"];
    args.extend(key.iter().map(String::as_str));
    bpftool(&args).map(|_| ())
}

/// Freezes map `map_id`: from now on the kernel refuses every update and delete from user
/// space (`EPERM`), while the XDP program keeps reading it. Irreversible for this map.
pub fn freeze(map_id: u64) {
    bpftool(&["map", "freeze", "id", &map_id.to_string()]).expect("bpftool map freeze");
}
