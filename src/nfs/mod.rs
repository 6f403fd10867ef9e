//! NFSv3 + MOUNT on one port (TCP and UDP), serving each node's root file
//! system, and the portmapper that tells clients where they are.
//!
//! - [`fs`]: the seam ([`fs::NodeFs`], [`fs::Exports`]) between this protocol
//!   code and the node overlay.
//! - [`rpc`]: ONC RPC record marking, call headers, AUTH_SYS.
//! - [`xdr`]: bounded decoding of call arguments into `nfs3_types` types.
//! - [`handles`]: signed file handles and the server key.
//! - [`access`]: permission checks from attributes and credentials.
//! - [`server`]: the MOUNT and NFS procedures.
//! - [`exports`]: one export per node of the inventory, and who may use it.
//! - [`overlay`]: a node's root, the image view under its copy-on-write
//!   upper directory.
//! - [`root`]: the [`fs::NodeFs`] of a node's export: the overlay, and the
//!   image alone while it streams; stable file ids on the wire.
//! - [`transport`]: calls over TCP (record marking) and UDP (datagrams).
//! - [`portmap`]: portmapper / rpcbind (program 100000, versions 2-4).

pub(crate) mod access;
pub(crate) mod exports;
pub mod fs;
pub(crate) mod handles;
pub(crate) mod overlay;
pub(crate) mod portmap;
pub(crate) mod root;
pub(crate) mod rpc;
pub(crate) mod server;
pub(crate) mod transport;
pub(crate) mod xdr;

pub use handles::load_or_create_key;
pub use transport::{serve, serve_with, Limits, NfsError};
