//! Builds the XDP object (fnm-ebpf) with aya-build on Linux and embeds it in the agent.
//!
//! On other platforms, or with `AYA_BUILD_SKIP=1`, an empty object is written instead: the agent
//! still builds (for the capture and flow backends) and refuses to start the XDP backend.
//! The eBPF crate is built with the pinned nightly (`build/ebpf_toolchain.rs`), and the build
//! stops with a clear message when its LLVM and bpf-linker's differ.
use std::{env, fs, path::PathBuf};

#[path = "build/ebpf_toolchain.rs"]
#[allow(dead_code)]
mod ebpf_toolchain;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("fnm");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let skip = matches!(env::var("AYA_BUILD_SKIP").as_deref(), Ok("1") | Ok("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!(
        "cargo:rerun-if-env-changed={}",
        ebpf_toolchain::TOOLCHAIN_ENV
    );
    println!("cargo:rerun-if-changed=build/ebpf_toolchain.rs");
    if target_os != "linux" || skip {
        fs::write(&object, [])?;
        return Ok(());
    }
    let toolchain = ebpf_toolchain::select()?;
    ebpf_toolchain::check_llvm(&toolchain.name)?;
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../fnm-ebpf");
    let root = root.canonicalize()?;
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "fnm-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain.name),
    )
}
