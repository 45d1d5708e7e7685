//! Makes cargo rebuild the XDP object when bpf-linker changes, and fails clearly without it.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!("cargo:warning=bpf-linker not found: run `cargo xtask setup` to install it");
        }
    }
}
