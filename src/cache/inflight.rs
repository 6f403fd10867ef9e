//! Single-flight bookkeeping: which chunks some task is fetching right now.

use super::ChunkKey;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

#[derive(Default)]
pub(crate) struct Inflight {
    map: Mutex<HashMap<ChunkKey, Arc<RwLock<()>>>>,
}

/// Keys this task must fill, and fills by others to wait for.
pub(crate) struct Claim<'a> {
    pub(crate) mine: Option<FillGuard<'a>>,
    pub(crate) waits: Vec<Arc<RwLock<()>>>,
}

/// Held while filling; dropping it (success or error) wakes the waiters, who
/// then look in the cache again and, if the fill failed, try it themselves.
pub(crate) struct FillGuard<'a> {
    owner: &'a Inflight,
    pub(crate) keys: Vec<ChunkKey>,
    _locks: Vec<OwnedRwLockWriteGuard<()>>,
}

impl Inflight {
    pub(crate) fn claim(&self, keys: &[ChunkKey]) -> Claim<'_> {
        let mut map = self.map.lock();
        let mut mine = Vec::new();
        let mut locks = Vec::new();
        let mut waits = Vec::new();
        for k in keys {
            if let Some(l) = map.get(k) {
                waits.push(l.clone());
            } else {
                let l = Arc::new(RwLock::new(()));
                let guard = l.clone().try_write_owned().expect("fresh lock is free");
                map.insert(k.clone(), l);
                mine.push(k.clone());
                locks.push(guard);
            }
        }
        Claim {
            mine: (!mine.is_empty()).then(|| FillGuard {
                owner: self,
                keys: mine,
                _locks: locks,
            }),
            waits,
        }
    }
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.map.lock();
        for k in &self.keys {
            map.remove(k);
        }
    }
}

impl Claim<'_> {
    /// Wait until every fill we did not claim has finished, one way or the other.
    pub(crate) async fn wait_others(waits: Vec<Arc<RwLock<()>>>) {
        for l in waits {
            let _ = l.read().await;
        }
    }
}
