//! The PF_RING backend on a host without libpfring (Debian ships none): the real `fnm-agent`
//! binary, built with the `pfring` feature (`cargo xtask test` builds it so), accepts the
//! config and then stops at start-up with an error naming every library it tried, instead of
//! failing to start for a missing shared object or capturing nothing. Needs no root: the
//! library is loaded before any interface is touched.
#![cfg(all(target_os = "linux", feature = "pfring"))]

use std::{
    process::Command,
    time::{Duration, Instant},
};

#[test]
fn pfring_backend_without_libpfring_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fnm-agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n\
             [capture]\nbackend = \"pfring\"\ninterfaces = [\"lo\"]\n\
             [capture.pfring]\nlibrary = \"libpfring-fnm-test-absent.so\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n[prometheus]\nlisten = \"127.0.0.1:0\"\n\
             [sflow]\nlisten = []\n[netflow]\nlisten = []\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_fnm-agent");

    let check = Command::new(binary)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run fnm-agent check-config");
    assert!(
        check.status.success(),
        "a pfring build accepts backend = \"pfring\": {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let started = Instant::now();
    let out = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run fnm-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "must fail without libpfring: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it must fail at once, not hang"
    );
    assert!(
        stderr.contains(
            "capture.backend = \"pfring\": cannot load libpfring-fnm-test-absent.so, \
             libpfring.so.1, libpfring.so.8: "
        ),
        "{stderr}"
    );
    assert!(stderr.contains("install PF_RING"), "{stderr}");
}
