//! DHCP server (being written).
