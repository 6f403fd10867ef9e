//! NFSv3 + MOUNT on one TCP port, serving each node's root file system.
//! (Protocol code and the node overlay are being written.)

pub mod fs;
