//! GoBGP v3 gRPC API (protobuf package `apipb`), generated once by `tonic-prost-build` 0.14 from
//! the definitions vendored in `fnm-agent/proto/gobgp/` (GoBGP v3.10.0, Apache-2.0).
//!
//! Only the client is generated. Do not edit `apipb.rs` by hand; see
//! `fnm-agent/proto/gobgp/README.md` for how to regenerate it.

/// Messages and the `GobgpApi` client of GoBGP v3.
#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod apipb;
