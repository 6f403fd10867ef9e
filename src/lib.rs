//! lazyboot: network-boot machines straight from an OCI image reference.
//!
//! Dependencies point one way: protocol front ends (`fuse`, `tftp`, `nfs`)
//! wrap the [`image::ImageView`], which reads through the [`cache`], which
//! fetches from a [`registry::Source`]. See ARCHITECTURE.md.

#![warn(missing_docs)]

pub(crate) mod api;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dhcp;
pub mod digest;
pub(crate) mod fleet;
pub(crate) mod fsck;
pub(crate) mod fuse;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod layer;
pub(crate) mod lockfile;
pub(crate) mod metrics;
pub mod nfs;
pub(crate) mod nodes;
pub mod platform;
pub mod profile;
pub mod progress;
pub mod reference;
pub mod registry;
pub(crate) mod secret_file;
pub mod serve;
pub mod tftp;

#[cfg(test)]
mod layout_tests;
#[cfg(test)]
pub(crate) mod noise;
