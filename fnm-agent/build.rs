//! Builds the XDP object (fnm-ebpf) with aya-build on Linux and embeds it in the agent.
//!
//! On other platforms, or with `AYA_BUILD_SKIP=1`, an empty object is written instead: the agent
//! still builds (for the capture and flow backends) and refuses to start the XDP backend.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("fnm");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let skip = matches!(env::var("AYA_BUILD_SKIP").as_deref(), Ok("1") | Ok("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if target_os != "linux" || skip {
        fs::write(&object, [])?;
        return Ok(());
    }
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
        aya_build::Toolchain::default(),
    )
}
