//! A bpffs of the test's own, mounted in the root mount namespace: `ip netns exec` gives each
//! agent a fresh /sys (and so its own /sys/fs/bpf), so pins that must outlive an agent, or be
//! seen by a second one and by `fnm-agent detach`, go here. Unmounted and removed on drop.
#![allow(dead_code)]

use std::{path::Path, process::Command};

/// A mounted bpffs directory.
pub struct BpffsDir {
    path: String,
}

impl BpffsDir {
    /// Mounts a bpffs at `/run/fnm-test-pins-<name>` (`name` unique to the test: its veth).
    pub fn mount(name: &str) -> Self {
        let path = format!("/run/fnm-test-pins-{name}");
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf", &path])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount bpffs at {path}");
        Self { path }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        Path::new(&self.path)
    }

    /// The names of the pins and owner records in it (`link-*`; not the kernel's own
    /// `maps.debug`, `progs.debug`), sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("link-"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
