//! NFSv3 + MOUNT on one TCP port, serving each node's root file system.
//!
//! - [`fs`]: the seam ([`fs::NodeFs`], [`fs::Exports`]) between this protocol
//!   code and the node overlay.
//! - [`rpc`]: ONC RPC record marking, call headers, AUTH_SYS.
//! - [`xdr`]: bounded decoding of call arguments into `nfs3_types` types.
//! - [`handles`]: signed file handles and the server key.
//! - [`access`]: permission checks from attributes and credentials.
//! - [`server`]: the accept loop and the MOUNT and NFS procedures.

pub mod access;
pub mod exports;
pub mod fs;
pub mod handles;
pub mod overlay;
pub mod rpc;
pub mod server;
#[cfg(test)]
pub mod testimage;
pub mod xdr;

pub use handles::load_or_create_key;
pub use server::{serve, NfsError};
