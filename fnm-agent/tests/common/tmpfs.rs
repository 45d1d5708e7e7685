//! A small tmpfs the test mounts on a temporary directory and fills at will: a state directory
//! whose disk is full, for real (`ENOSPC` from the kernel), and unmounted on drop.
#![allow(dead_code)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

/// A mounted tmpfs of a fixed size; lazily unmounted (and its directory removed) on drop.
pub struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `1M`) on a new temporary directory.
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("fnm-test-state")
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a {size} tmpfs on {}: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Fills it to the last byte: writes a file until the kernel answers `ENOSPC`.
    pub fn fill(&self) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("create the filler file");
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Whatever is left (less than a page) fits no state file either.
        let _ = f.write(&chunk[..1]);
        assert!(
            std::fs::write(self.path().join("probe"), b"x").is_err(),
            "the tmpfs is full"
        );
    }

    /// Frees what [`SmallTmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler file");
        let _ = std::fs::remove_file(self.path().join("probe"));
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        // Lazy: an agent still holding a file there cannot keep the mount alive.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
