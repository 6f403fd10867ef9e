//! The full-mode address pool and its leases.
//!
//! The pool is one range per subnet served (the link's, and each relayed
//! `[[dhcp.subnets]]` one); a DISCOVER is offered an address of the range
//! of the subnet it comes from. Leases are one table for all of them, keyed
//! by MAC (chaddr), like the node inventory: option 61 client identifiers
//! are not used, so a machine keeps its address across firmware stages
//! (ROM, iPXE, U-Boot, Linux) that identify differently.
//!
//! Every change to a bound lease is written to disk before the client hears
//! about it: JSON to a temporary file, fsync, rename over the old file,
//! fsync the directory. A crash leaves either the old or the new file,
//! never a torn one. Offers and declined addresses live in memory only:
//! losing them costs a client one more DISCOVER. Neither grows with what
//! clients send: expired offers are dropped whenever one is made (so at
//! most one per address of the pool is held), an offer to a machine that is
//! not a node yet gives way to any other DISCOVER once the pool is
//! exhausted (a flood of made-up MACs cannot starve real machines), and
//! only addresses of the pool can be declined.
//!
//! Times are Unix seconds passed in by the caller, so the pool can be
//! tested without a clock and expiry survives restarts.

use crate::config::MacAddr;
use crate::dhcp::DhcpError;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// How long an offered address stays reserved for the client it was offered
/// to. Long enough for a slow ROM's REQUEST, and renewed by every DISCOVER
/// (the Raspberry Pi 3 ROM uses an offered address without ever sending a
/// REQUEST).
pub(crate) const OFFER_HOLD_SECS: u64 = 120;
/// How long an address a client DECLINEd (someone else answers ARP for it)
/// is kept out of the pool.
pub(crate) const DECLINE_HOLD_SECS: u64 = 600;

const FILE_VERSION: u32 = 1;

/// One bound address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    #[serde(serialize_with = "ser_mac")]
    pub(crate) mac: MacAddr,
    pub(crate) ip: Ipv4Addr,
    /// Unix seconds.
    pub(crate) expires: u64,
    /// The node name at the time of binding (for people reading the file).
    #[serde(default)]
    pub(crate) node: String,
}

fn ser_mac<S: serde::Serializer>(m: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.to_string())
}

/// The number of leases in the lease file at `path`, or why it cannot be
/// read as one (`lazyboot fsck`; `serve` moves such a file aside).
pub(crate) fn check_file(path: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file: LeaseFile = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(file.leases.len())
}

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

/// The addresses handed out: one range per subnet served, and the fixed
/// addresses of configured nodes.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    /// The on-link subnet's range first, then those of `[[dhcp.subnets]]`
    /// in order (callers name a range by its index); their subnets do not
    /// overlap.
    pub(crate) ranges: Vec<Range>,
    /// Fixed addresses of configured nodes: each only ever goes to its MAC,
    /// wherever it lies.
    pub(crate) reserved: HashMap<Ipv4Addr, MacAddr>,
}

/// The addresses of one subnet that may be handed out.
#[derive(Clone, Debug)]
pub(crate) struct Range {
    pub(crate) start: Ipv4Addr,
    pub(crate) end: Ipv4Addr,
    /// The subnet the range lies in.
    pub(crate) subnet: Ipv4Net,
    /// Addresses of the subnet that are never a client's: the server's own,
    /// the router's.
    pub(crate) excluded: Vec<Ipv4Addr>,
}

impl Range {
    fn holds(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    /// Whether `ip` may be a client's address in this subnet: inside it,
    /// neither its network nor its broadcast address, not excluded.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && !self.excluded.contains(&ip)
    }
}

impl Pool {
    /// Whether `ip` lies in one of the ranges.
    fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|r| r.holds(ip))
    }

    /// Addresses that can never be a client's: outside every subnet served,
    /// or unusable in the one they lie in.
    fn unusable(&self, ip: Ipv4Addr) -> bool {
        !self
            .ranges
            .iter()
            .any(|r| r.subnet.contains(&ip) && r.usable(ip))
    }
}

/// An address offered and held for a client.
#[derive(Clone, Copy, Debug)]
struct Offer {
    ip: Ipv4Addr,
    /// Unix seconds.
    until: u64,
    /// Made to a machine that is not a node of the inventory yet: anyone
    /// may take the address when the pool has no other.
    yielding: bool,
}

pub(crate) struct LeaseDb {
    pool: Pool,
    path: Option<PathBuf>,
    /// Bound leases (current and expired), by address.
    leases: BTreeMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    /// Outstanding offers.
    offers: HashMap<MacAddr, Offer>,
    declined: HashMap<Ipv4Addr, u64>,
}

impl LeaseDb {
    /// A pool that is never written to disk (tests).
    pub(crate) fn in_memory(pool: Pool) -> LeaseDb {
        LeaseDb {
            pool,
            path: None,
            leases: BTreeMap::new(),
            by_mac: HashMap::new(),
            offers: HashMap::new(),
            declined: HashMap::new(),
        }
    }

    /// The pool with the leases saved at `path`, if the file exists. A file
    /// that cannot be parsed is moved aside (`.bad`) with a warning rather
    /// than stopping DHCP; leases that no longer fit the configuration (an
    /// address outside the subnet, another node's fixed address) are dropped.
    pub(crate) fn open(pool: Pool, path: &Path) -> Result<LeaseDb, DhcpError> {
        let mut db = LeaseDb::in_memory(pool);
        db.path = Some(path.to_path_buf());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DhcpError::Leases {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(db),
            Err(source) => {
                return Err(DhcpError::Leases {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let file: LeaseFile = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                let aside = path.with_extension("json.bad");
                tracing::warn!(
                    "{}: unreadable lease file ({e}); moved to {} and starting empty",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(path, &aside);
                return Ok(db);
            }
        };
        for lease in file.leases {
            let fits = !db.pool.unusable(lease.ip)
                && match db.pool.reserved.get(&lease.ip) {
                    Some(owner) => *owner == lease.mac,
                    None => db.pool.in_range(lease.ip),
                };
            if !fits {
                tracing::info!(
                    "dropping saved lease {} for {}: it no longer fits the configuration",
                    lease.ip,
                    lease.mac
                );
                continue;
            }
            // Keep one lease per MAC and per address: the latest.
            if let Some(old_ip) = db.by_mac.get(&lease.mac).copied() {
                if db.leases[&old_ip].expires >= lease.expires {
                    continue;
                }
                db.leases.remove(&old_ip);
            }
            if let Some(old) = db.leases.get(&lease.ip) {
                if old.expires >= lease.expires {
                    continue;
                }
                db.by_mac.remove(&old.mac);
            }
            db.by_mac.insert(lease.mac, lease.ip);
            db.leases.insert(lease.ip, lease);
        }
        Ok(db)
    }

    /// The lease (current or expired) recorded for `mac`.
    #[cfg(test)]
    pub(crate) fn lease_of(&self, mac: MacAddr) -> Option<&Lease> {
        self.by_mac.get(&mac).and_then(|ip| self.leases.get(ip))
    }

    pub(crate) fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Whether `ip` may be bound to `mac` now: inside one of the ranges (or
    /// `mac`'s fixed address), not held by anyone else's current lease or
    /// offer, not declined. Which subnet the client is on is the caller's
    /// to check.
    pub(crate) fn available_to(&self, ip: Ipv4Addr, mac: MacAddr, now: u64) -> bool {
        match self.pool.reserved.get(&ip) {
            Some(owner) => return *owner == mac && !self.pool.unusable(ip),
            None if !self.pool.in_range(ip) || self.pool.unusable(ip) => return false,
            None => {}
        }
        if self.declined.get(&ip).is_some_and(|&until| until > now) {
            return false;
        }
        if self
            .leases
            .get(&ip)
            .is_some_and(|l| l.mac != mac && l.expires > now)
        {
            return false;
        }
        !self
            .offers
            .iter()
            .any(|(m, o)| o.ip == ip && *m != mac && o.until > now)
    }

    /// Choose an address in range `range` (an index into
    /// [`Pool::ranges`]: the subnet the request comes from) for `mac` and
    /// hold it as an offer. Preference: the node's fixed address; the
    /// address it had before (even expired, if still free); an outstanding
    /// offer; the address it asks for; a never-used address; the address
    /// whose lease expired longest ago; the address of the oldest offer made
    /// to a machine that is not a node yet. Only addresses of that subnet
    /// qualify. `None`: the range is exhausted (or there is no such range).
    pub(crate) fn offer(
        &mut self,
        range: usize,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        self.offer_as(range, mac, requested, now, false)
    }

    /// Like [`offer`](Self::offer), for a machine that is not a node of the
    /// inventory yet (a pending node): its offer gives way to anyone else's
    /// DISCOVER when the range has no other address.
    pub(crate) fn offer_yielding(
        &mut self,
        range: usize,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        self.offer_as(range, mac, requested, now, true)
    }

    fn offer_as(
        &mut self,
        range: usize,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: u64,
        yielding: bool,
    ) -> Option<Ipv4Addr> {
        self.offers.retain(|_, o| o.until > now);
        let subnet = self.pool.ranges.get(range)?.subnet;
        // A machine that moved to another subnet gets nothing of its old one.
        let here = |ip: &Ipv4Addr| subnet.contains(ip);
        let fixed = self
            .pool
            .reserved
            .iter()
            .find(|(_, m)| **m == mac)
            .map(|(ip, _)| *ip)
            .filter(here);
        let previous = self.by_mac.get(&mac).copied().filter(here);
        let offered = self.offers.get(&mac).map(|o| o.ip).filter(here);
        let requested = requested.filter(here);
        let ip = fixed
            .or(previous.filter(|ip| self.available_to(*ip, mac, now)))
            .or(offered.filter(|ip| self.available_to(*ip, mac, now)))
            .or(requested.filter(|ip| self.available_to(*ip, mac, now)))
            .or_else(|| self.free_address(range, mac, now))
            .or_else(|| self.take_yielding_offer(subnet, mac, now))?;
        self.offers.insert(
            mac,
            Offer {
                ip,
                until: now + OFFER_HOLD_SECS,
                yielding,
            },
        );
        Some(ip)
    }

    /// The address in `subnet` of the oldest offer to a machine that is not
    /// a node yet, withdrawn from it (its REQUEST will be NAKed: it starts
    /// over).
    fn take_yielding_offer(&mut self, subnet: Ipv4Net, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        let (holder, ip) = self
            .offers
            .iter()
            .filter(|(m, o)| o.yielding && **m != mac && subnet.contains(&o.ip))
            .min_by_key(|(_, o)| o.until)
            .map(|(m, o)| (*m, o.ip))?;
        self.offers.remove(&holder);
        self.available_to(ip, mac, now).then_some(ip)
    }

    fn free_address(&self, range: usize, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        let r = &self.pool.ranges[range];
        let mut oldest: Option<(u64, Ipv4Addr)> = None;
        for n in u32::from(r.start)..=u32::from(r.end) {
            let ip = Ipv4Addr::from(n);
            if !self.available_to(ip, mac, now) {
                continue;
            }
            match self.leases.get(&ip) {
                None => return Some(ip),
                Some(l) => {
                    if oldest.is_none_or(|(t, _)| l.expires < t) {
                        oldest = Some((l.expires, ip));
                    }
                }
            }
        }
        oldest.map(|(_, ip)| ip)
    }

    /// `mac`'s offer no longer gives way to others (its machine became a
    /// node).
    pub(crate) fn keep_offer(&mut self, mac: MacAddr) {
        if let Some(o) = self.offers.get_mut(&mac) {
            o.yielding = false;
        }
    }

    /// The client took another server's offer (or gave up on ours).
    pub(crate) fn forget_offer(&mut self, mac: MacAddr) {
        self.offers.remove(&mac);
    }

    /// Bind `ip` to `mac` until `now + lease_secs` and save. The caller has
    /// checked [`LeaseDb::available_to`]; whatever record held `ip` before
    /// (an expired lease, or anyone's lease on a fixed address) goes.
    pub(crate) fn bind(
        &mut self,
        mac: MacAddr,
        ip: Ipv4Addr,
        node: &str,
        lease_secs: u64,
        now: u64,
    ) -> Result<Lease, DhcpError> {
        if let Some(old_ip) = self.by_mac.remove(&mac) {
            self.leases.remove(&old_ip);
        }
        if let Some(old) = self.leases.remove(&ip) {
            self.by_mac.remove(&old.mac);
        }
        self.offers.remove(&mac);
        let lease = Lease {
            mac,
            ip,
            expires: now.saturating_add(lease_secs),
            node: node.to_string(),
        };
        self.by_mac.insert(mac, ip);
        self.leases.insert(ip, lease.clone());
        self.save()?;
        Ok(lease)
    }

    /// DHCPRELEASE: the lease ends now. The record stays so the same client
    /// gets the same address back while nobody else took it.
    pub(crate) fn release(
        &mut self,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: u64,
    ) -> Result<bool, DhcpError> {
        match self.leases.get_mut(&ip) {
            Some(l) if l.mac == mac => {
                l.expires = l.expires.min(now);
                self.save()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// DHCPDECLINE: another machine uses `ip`. Keep it out of the pool for a
    /// while and drop the client's lease on it.
    pub(crate) fn decline(
        &mut self,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: u64,
    ) -> Result<(), DhcpError> {
        self.offers.remove(&mac);
        if self.pool.in_range(ip) || self.pool.reserved.get(&ip) == Some(&mac) {
            // Only addresses we hand out: the map stays as small as the pool.
            self.declined.retain(|_, until| *until > now);
            self.declined.insert(ip, now + DECLINE_HOLD_SECS);
        }
        if self.leases.get(&ip).is_some_and(|l| l.mac == mac) {
            self.leases.remove(&ip);
            self.by_mac.remove(&mac);
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), DhcpError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = LeaseFile {
            version: FILE_VERSION,
            leases: self.leases.values().cloned().collect(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("leases serialise");
        write_atomically(path, &json).map_err(|source| DhcpError::Leases {
            path: path.clone(),
            source,
        })
    }
}

/// Write `data` to `path` so that a crash leaves the old or the new content.
/// Blocking, but a lease file is a few KB and only written on lease changes.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 9, 0, n)
    }

    /// The on-link range .start..=.end of 10.9.0.0/24, the server at .1.
    fn range(start: u8, end: u8) -> Range {
        Range {
            start: ip(start),
            end: ip(end),
            subnet: "10.9.0.0/24".parse().unwrap(),
            excluded: vec![ip(1)],
        }
    }

    fn pool(start: u8, end: u8) -> Pool {
        Pool {
            ranges: vec![range(start, end)],
            reserved: HashMap::new(),
        }
    }

    /// A relayed subnet's address.
    fn far(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 218, 5, n)
    }

    /// The on-link range .100..=.101 and the relayed 10.218.5.100..=.101,
    /// its router at .1.
    fn two_subnets() -> Pool {
        let relayed = Range {
            start: far(100),
            end: far(101),
            subnet: "10.218.5.0/24".parse().unwrap(),
            excluded: vec![far(1)],
        };
        Pool {
            ranges: vec![range(100, 101), relayed],
            reserved: HashMap::new(),
        }
    }

    #[test]
    fn usable_addresses() {
        let r = Range {
            subnet: "10.9.0.0/16".parse().unwrap(),
            ..range(100, 150)
        };
        assert!(r.usable(ip(7)));
        assert!(r.usable(Ipv4Addr::new(10, 9, 1, 7)));
        assert!(!r.usable(ip(1)), "excluded");
        assert!(!r.usable(Ipv4Addr::new(10, 9, 0, 0)), "network");
        assert!(!r.usable(Ipv4Addr::new(10, 9, 255, 255)), "broadcast");
        assert!(!r.usable(Ipv4Addr::new(10, 10, 0, 7)), "outside");
        assert!(r.holds(ip(150)) && !r.holds(ip(151)));
        let p = two_subnets();
        assert!(!p.unusable(far(7)) && p.unusable(far(1)) && p.unusable(far(255)));
        assert!(p.unusable(Ipv4Addr::new(10, 218, 6, 7)), "in no subnet");
        assert!(p.in_range(far(101)) && !p.in_range(far(102)));
    }

    #[test]
    fn each_subnet_offers_from_its_own_range() {
        let mut db = LeaseDb::in_memory(two_subnets());
        assert_eq!(db.offer(1, mac(1), None, 0), Some(far(100)));
        assert_eq!(db.offer(0, mac(2), None, 0), Some(ip(100)));
        // An address of another subnet is not offered, even when asked for.
        assert_eq!(db.offer(1, mac(3), Some(ip(101)), 0), Some(far(101)));
        assert_eq!(
            db.offer(1, mac(4), None, 0),
            None,
            "the relayed range is full"
        );
        assert_eq!(db.offer(0, mac(4), None, 0), Some(ip(101)));
        assert_eq!(db.offer(2, mac(5), None, 0), None, "no such range");
        // A node that moves to the other subnet gets an address there; its
        // old lease stays until it is bound elsewhere.
        db.bind(mac(2), ip(100), "a", 1000, 1).unwrap();
        let later = 1 + OFFER_HOLD_SECS;
        assert_eq!(db.offer(1, mac(2), None, later), Some(far(100)));
        db.bind(mac(2), far(100), "a", 1000, later).unwrap();
        assert_eq!(db.lease_of(mac(2)).unwrap().ip, far(100));
        assert!(db.available_to(ip(100), mac(9), later));
        // Offers to pending machines give way only within their subnet.
        let mut db = LeaseDb::in_memory(two_subnets());
        assert_eq!(db.offer_yielding(0, mac(1), None, 0), Some(ip(100)));
        assert_eq!(db.offer_yielding(0, mac(2), None, 0), Some(ip(101)));
        assert_eq!(db.offer(1, mac(3), None, 1), Some(far(100)));
        assert_eq!(db.offer(1, mac(4), None, 1), Some(far(101)));
        assert_eq!(db.offer(1, mac(5), None, 1), None);
        assert!(!db.available_to(ip(100), mac(5), 1), "mac 1 kept it");
    }

    #[test]
    fn allocates_in_order_and_holds_offers() {
        let mut db = LeaseDb::in_memory(pool(100, 102));
        assert_eq!(db.offer(0, mac(1), None, 0), Some(ip(100)));
        // Asking again gets the same offer, not a new address.
        assert_eq!(db.offer(0, mac(1), None, 1), Some(ip(100)));
        assert_eq!(db.offer(0, mac(2), None, 1), Some(ip(101)));
        // A requested address is honoured when free...
        assert_eq!(db.offer(0, mac(3), Some(ip(102)), 1), Some(ip(102)));
        // ...and the pool is now exhausted while the offers are held.
        assert_eq!(db.offer(0, mac(4), None, 2), None);
        // Offers lapse.
        assert_eq!(
            db.offer(0, mac(4), None, 2 + OFFER_HOLD_SECS),
            Some(ip(100))
        );
    }

    #[test]
    fn skips_server_network_and_broadcast_addresses() {
        let mut db = LeaseDb::in_memory(pool(0, 2));
        // .0 is the network, .1 the server: .2 is the only one.
        assert_eq!(db.offer(0, mac(1), None, 0), Some(ip(2)));
        assert_eq!(db.offer(0, mac(2), None, 0), None);
        assert!(!db.available_to(ip(1), mac(2), 0));
        assert!(!db.available_to(ip(200), mac(2), 0), "outside the pool");
    }

    #[test]
    fn expiry_frees_addresses_oldest_first() {
        let mut db = LeaseDb::in_memory(pool(100, 101));
        db.bind(mac(1), ip(100), "a", 100, 0).unwrap();
        db.bind(mac(2), ip(101), "b", 200, 0).unwrap();
        assert_eq!(db.offer(0, mac(3), None, 50), None, "both leases current");
        assert!(!db.available_to(ip(100), mac(3), 50));
        assert!(db.available_to(ip(100), mac(1), 50), "own lease");
        // At 150 only .100 has expired.
        assert_eq!(db.offer(0, mac(3), None, 150), Some(ip(100)));
        // The old owner comes back: its address is on offer to someone
        // else, so it gets nothing now.
        assert_eq!(db.offer(0, mac(1), None, 151), None);
        // Once everything has lapsed, a newcomer gets the address whose
        // lease expired longest ago...
        let later = 300 + OFFER_HOLD_SECS;
        assert_eq!(db.offer(0, mac(4), None, later), Some(ip(100)));
        // ...and a returning client its previous address.
        assert_eq!(db.offer(0, mac(2), None, later), Some(ip(101)));
    }

    #[test]
    fn fixed_addresses_belong_to_their_node() {
        let mut p = pool(100, 101);
        p.reserved.insert(ip(100), mac(9));
        p.reserved.insert(ip(20), mac(8));
        let mut db = LeaseDb::in_memory(p);
        // .100 is reserved: others skip it.
        assert_eq!(db.offer(0, mac(1), None, 0), Some(ip(101)));
        assert_eq!(db.offer(0, mac(2), Some(ip(100)), 0), None);
        // The owners always get theirs, even outside the pool.
        assert_eq!(db.offer(0, mac(9), None, 0), Some(ip(100)));
        assert_eq!(db.offer(0, mac(8), None, 0), Some(ip(20)));
        assert!(db.available_to(ip(20), mac(8), 0));
        assert!(!db.available_to(ip(20), mac(1), 0));
    }

    #[test]
    fn release_and_decline() {
        let mut db = LeaseDb::in_memory(pool(100, 101));
        db.bind(mac(1), ip(100), "a", 1000, 0).unwrap();
        assert!(!db.release(mac(2), ip(100), 10).unwrap(), "not its lease");
        assert!(db.release(mac(1), ip(100), 10).unwrap());
        assert_eq!(db.lease_of(mac(1)).unwrap().expires, 10);
        assert!(db.available_to(ip(100), mac(2), 11));
        // The releasing client still gets its address back first.
        assert_eq!(db.offer(0, mac(1), None, 11), Some(ip(100)));
        db.bind(mac(1), ip(100), "a", 1000, 12).unwrap();
        db.decline(mac(1), ip(100), 13).unwrap();
        assert!(db.lease_of(mac(1)).is_none());
        assert!(!db.available_to(ip(100), mac(1), 14));
        assert_eq!(db.offer(0, mac(1), None, 14), Some(ip(101)));
        assert!(db.available_to(ip(100), mac(2), 14 + DECLINE_HOLD_SECS));
    }

    #[test]
    fn offers_to_pending_machines_give_way_and_nothing_piles_up() {
        let mut db = LeaseDb::in_memory(pool(100, 101));
        // Two made-up MACs hold the whole pool...
        assert_eq!(db.offer_yielding(0, mac(1), None, 0), Some(ip(100)));
        assert_eq!(db.offer_yielding(0, mac(2), None, 1), Some(ip(101)));
        // ...yet a node gets the address of the oldest such offer.
        assert_eq!(db.offer(0, mac(3), None, 2), Some(ip(100)));
        assert!(!db.available_to(ip(100), mac(1), 2), "mac 1 lost it");
        // A node's offer does not give way; a pending machine's gives way
        // to anyone.
        assert_eq!(db.offer_yielding(0, mac(4), None, 3), Some(ip(101)));
        assert_eq!(db.offer_yielding(0, mac(5), None, 4), Some(ip(101)));
        assert!(db.available_to(ip(100), mac(3), 4));
        assert!(!db.available_to(ip(100), mac(5), 4));
        // A flood of made-up MACs holds at most one offer per address.
        for n in 10..250 {
            db.offer_yielding(0, mac(n), None, 5 + n as u64);
        }
        assert!(db.offers.len() <= 2, "{}", db.offers.len());
        // Expired offers are dropped when the next one is made.
        db.offer(0, mac(3), None, 1000);
        assert_eq!(db.offers.len(), 1);
        // Only addresses of the pool can be declined.
        for n in 0..=255 {
            db.decline(mac(9), Ipv4Addr::new(192, 168, 7, n), 1001)
                .unwrap();
        }
        assert!(db.declined.is_empty());
    }

    #[test]
    fn rebinding_moves_a_client() {
        let mut db = LeaseDb::in_memory(pool(100, 102));
        db.bind(mac(1), ip(100), "a", 1000, 0).unwrap();
        db.bind(mac(1), ip(102), "a", 1000, 0).unwrap();
        assert_eq!(db.leases().count(), 1);
        assert_eq!(db.lease_of(mac(1)).unwrap().ip, ip(102));
    }

    #[test]
    fn leases_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcp/leases.json");
        {
            let mut db = LeaseDb::open(pool(100, 150), &path).unwrap();
            assert_eq!(db.leases().count(), 0);
            db.bind(mac(1), ip(100), "pi1", 3600, 1000).unwrap();
            db.bind(mac(2), ip(101), "pc1", 3600, 1000).unwrap();
            db.release(mac(2), ip(101), 1001).unwrap();
        }
        // The file is plain JSON and no temporary is left behind.
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["leases"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(v["leases"][0]["ip"], "10.9.0.100");
        assert_eq!(v["leases"][0]["node"], "pi1");
        assert!(!path.with_extension("json.tmp").exists());

        let mut db = LeaseDb::open(pool(100, 150), &path).unwrap();
        let l = db.lease_of(mac(1)).unwrap();
        assert_eq!((l.ip, l.expires), (ip(100), 4600));
        assert_eq!(db.lease_of(mac(2)).unwrap().expires, 1001);
        // A current lease is still held against others after the restart.
        assert!(!db.available_to(ip(100), mac(3), 2000));
        assert!(db.available_to(ip(100), mac(1), 2000));
        assert_eq!(db.offer(0, mac(1), None, 2000), Some(ip(100)));
        assert_eq!(db.offer(0, mac(3), None, 2000), Some(ip(102)));

        // A smaller pool drops leases that no longer fit.
        let db = LeaseDb::open(pool(101, 150), &path).unwrap();
        assert!(db.lease_of(mac(1)).is_none());
        assert!(db.lease_of(mac(2)).is_some());
    }

    #[test]
    fn a_damaged_lease_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        std::fs::write(&path, b"{\"version\": 1, \"leases\": [tru").unwrap();
        let mut db = LeaseDb::open(pool(100, 150), &path).unwrap();
        assert_eq!(db.leases().count(), 0);
        assert!(path.with_extension("json.bad").exists());
        db.bind(mac(1), ip(100), "a", 10, 0).unwrap();
        assert!(LeaseDb::open(pool(100, 150), &path)
            .unwrap()
            .lease_of(mac(1))
            .is_some());
    }
}
