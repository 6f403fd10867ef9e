//! DHCP server: hands out addresses (full mode) or only boot options
//! (proxy mode, for sites whose router runs DHCP), and tells each node what
//! to fetch over TFTP according to its kind.
//!
//! - `packet`: validating a received datagram (malformed ones are dropped).
//! - [`options`]: what a request says about its sender; reply building per
//!   node kind (pure, unit-tested byte for byte).
//! - [`leases`]: the address pool and crash-safe lease persistence
//!   (`state_dir/dhcp/leases.json`).
//! - `subnets`: the networks full mode serves (the link's and the
//!   `[[dhcp.subnets]]` behind relay agents), which one a request comes
//!   from, and how replies to relayed requests are addressed.
//! - `server`: the RFC 2131 / ProxyDHCP state machine and the socket loop.
//!
//! It listens only on `server.interface` (SO_BINDTODEVICE), on UDP 67, and
//! in proxy mode also on 4011. In full mode, requests through relay agents
//! (giaddr set) are served from the `[[dhcp.subnets]]` network that holds
//! giaddr and answered to the relay; proxy mode ignores them.

pub(crate) mod leases;
pub(crate) mod options;
pub(crate) mod packet;
mod server;
pub(crate) mod subnets;

use crate::serve::ServeContext;
use std::path::PathBuf;
use std::sync::Arc;

/// Why the DHCP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The socket could not be bound.
    #[error("DHCP: cannot listen on {interface} UDP port {port}: {source}")]
    Bind {
        /// The interface it was to be bound to.
        interface: String,
        /// The UDP port.
        port: u16,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The lease file could not be read or written.
    #[error("DHCP lease file {}: {source}", path.display())]
    Leases {
        /// The lease file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The `[dhcp]` settings cannot work on this machine.
    #[error("DHCP configuration: {0}")]
    Config(String),
}

/// Serve DHCP as `ctx.config.dhcp` says until an error (failing to bind,
/// to read the lease file, ...). Malformed packets, unknown machines and
/// send failures are logged and do not stop it. With `mode = "off"` it
/// binds nothing and never returns. The caller aborts the task to stop it;
/// leases are on disk by then (each is saved before it is acknowledged).
pub async fn run(ctx: Arc<ServeContext>) -> Result<(), DhcpError> {
    server::serve(ctx).await
}
