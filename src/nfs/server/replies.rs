//! The duplicate request cache: the replies to recent calls that change
//! something, so that a call sent again gets the answer the first one got
//! instead of being run twice.
//!
//! A client resends a call when it did not see the reply: after a
//! reconnect (TCP) or a timeout (UDP). Run again, a REMOVE that succeeded
//! would answer NOENT, an exclusive CREATE EXIST, a RENAME NOENT, and a
//! WRITE or SETATTR could undo a later one. Like knfsd, the cache covers
//! SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME and
//! LINK. A call is the same call when client address, xid, procedure,
//! credentials and arguments are (the address alone, not the port: a
//! reconnected TCP client comes from a new port). A copy that arrives
//! while the first is still running waits for its reply.
//!
//! Bounded: at most [`MAX_ENTRIES`] replies, each kept [`TTL`] at most
//! (a client resends within seconds); the replies of these procedures are
//! a few hundred bytes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{Head, NFS_PROGRAM};

/// Replies kept at most.
pub(crate) const MAX_ENTRIES: usize = 4096;
/// How long a reply is kept.
pub(crate) const TTL: Duration = Duration::from_secs(120);

/// NFSv3 procedures whose second run would not answer as the first did.
const NOT_IDEMPOTENT: [u32; 10] = [2, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// What makes two calls the same call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    client: IpAddr,
    xid: u32,
    proc_: u32,
    uid: u32,
    gid: u32,
    args_len: usize,
    args_hash: u64,
}

impl Key {
    /// The key of call `h`, if its procedure is one the cache covers.
    pub(crate) fn of(h: &Head, args: &[u8], client: IpAddr) -> Option<Key> {
        if h.prog != NFS_PROGRAM || h.vers != 3 || !NOT_IDEMPOTENT.contains(&h.proc_) {
            return None;
        }
        Some(Key {
            client,
            xid: h.xid,
            proc_: h.proc_,
            uid: h.cred.uid,
            gid: h.cred.gid,
            args_len: args.len(),
            args_hash: xxhash_rust::xxh3::xxh3_64(args),
        })
    }
}

type Reply = Arc<Vec<u8>>;

enum Entry {
    /// Being run: its reply arrives on the channel (`None` until then; the
    /// sender is dropped without a reply if the call never finished).
    Running(watch::Receiver<Option<Reply>>),
    Done(Reply),
}

/// What to do with a call.
pub(crate) enum Seen {
    /// New: run it, then [`Running::finish`].
    New(Running),
    /// Answered before: send this reply again.
    Answered(Reply),
    /// A copy is running: wait for its reply ([`Seen::wait`]).
    Running(watch::Receiver<Option<Reply>>),
}

impl Seen {
    /// The reply of the running copy, or `None` if it never finished (then
    /// run the call).
    pub(crate) async fn wait(mut rx: watch::Receiver<Option<Reply>>) -> Option<Reply> {
        let r = rx.wait_for(Option::is_some).await.ok()?;
        r.clone()
    }
}

/// A call being run; its reply goes into the cache with [`finish`](Self::finish).
pub(crate) struct Running {
    cache: Arc<Inner>,
    key: Key,
    tx: watch::Sender<Option<Reply>>,
}

impl Running {
    pub(crate) fn finish(self, reply: Vec<u8>) -> Reply {
        let reply = Arc::new(reply);
        let mut st = self.cache.state.lock();
        if let Some((_, e)) = st.entries.get_mut(&self.key) {
            *e = Entry::Done(reply.clone());
        }
        drop(st);
        self.tx.send_replace(Some(reply.clone()));
        reply
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Not finished (the task failed): forget it, so a copy runs afresh.
        if self.tx.borrow().is_none() {
            let mut st = self.cache.state.lock();
            if matches!(st.entries.get(&self.key), Some((_, Entry::Running(_)))) {
                st.entries.remove(&self.key);
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// Each with when it came, which tells its `order` slot from a stale one.
    entries: HashMap<Key, (Instant, Entry)>,
    /// Keys in the order they came, with when.
    order: VecDeque<(Key, Instant)>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
}

/// See the module doc.
#[derive(Default, Clone)]
pub(crate) struct ReplyCache {
    inner: Arc<Inner>,
}

impl ReplyCache {
    /// Look `key` up at `now`, and record it as running if it is new.
    pub(crate) fn seen(&self, key: Key, now: Instant) -> Seen {
        let mut st = self.inner.state.lock();
        Self::expire(&mut st, now);
        match st.entries.get(&key) {
            Some((_, Entry::Done(r))) => return Seen::Answered(r.clone()),
            Some((_, Entry::Running(rx))) => return Seen::Running(rx.clone()),
            None => {}
        }
        let (tx, rx) = watch::channel(None);
        st.entries.insert(key.clone(), (now, Entry::Running(rx)));
        st.order.push_back((key.clone(), now));
        Seen::New(Running {
            cache: self.inner.clone(),
            key,
            tx,
        })
    }

    /// Drop what is too old, then the oldest until there is room for one more.
    fn expire(st: &mut State, now: Instant) {
        while let Some((key, at)) = st.order.front() {
            let full = st.order.len() >= MAX_ENTRIES;
            if !full && now.saturating_duration_since(*at) < TTL {
                break;
            }
            let (key, at) = (key.clone(), *at);
            st.order.pop_front();
            if st.entries.get(&key).is_some_and(|(t, _)| *t == at) {
                st.entries.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.state.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::fs::Cred;

    fn head(xid: u32, proc_: u32) -> Head {
        Head {
            xid,
            prog: NFS_PROGRAM,
            vers: 3,
            proc_,
            cred: Cred {
                uid: 0,
                gid: 0,
                gids: vec![],
            },
            udp: false,
        }
    }

    fn key(xid: u32) -> Key {
        Key::of(&head(xid, 12), b"args", "10.0.0.2".parse().unwrap()).unwrap()
    }

    #[test]
    fn only_changing_nfs_calls_have_keys() {
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        for p in [0, 1, 3, 4, 5, 6, 16, 17, 18, 19, 20, 21] {
            assert!(Key::of(&head(1, p), b"", ip).is_none(), "proc {p}");
        }
        for p in NOT_IDEMPOTENT {
            assert!(Key::of(&head(1, p), b"", ip).is_some(), "proc {p}");
        }
        let mut mount = head(1, 12);
        mount.prog = super::super::MOUNT_PROGRAM;
        assert!(Key::of(&mount, b"", ip).is_none());
        // Another client, xid or argument is another call.
        let k = key(1);
        assert_ne!(k, key(2));
        assert_ne!(k, Key::of(&head(1, 12), b"other", ip).unwrap());
        assert_ne!(
            k,
            Key::of(&head(1, 12), b"args", "10.0.0.3".parse().unwrap()).unwrap()
        );
    }

    #[tokio::test]
    async fn a_copy_gets_the_first_reply_and_waits_for_a_running_one() {
        let cache = ReplyCache::default();
        let now = Instant::now();
        let Seen::New(first) = cache.seen(key(1), now) else {
            panic!("new call")
        };
        let Seen::Running(rx) = cache.seen(key(1), now) else {
            panic!("a copy of a running call waits")
        };
        let waiting = tokio::spawn(Seen::wait(rx));
        first.finish(b"reply".to_vec());
        assert_eq!(waiting.await.unwrap().unwrap().as_slice(), b"reply");
        let Seen::Answered(r) = cache.seen(key(1), now) else {
            panic!("answered")
        };
        assert_eq!(r.as_slice(), b"reply");
        // A call that never finished is forgotten: its copy runs.
        let Seen::New(lost) = cache.seen(key(2), now) else {
            panic!("new call")
        };
        let Seen::Running(rx) = cache.seen(key(2), now) else {
            panic!("running")
        };
        drop(lost);
        assert!(Seen::wait(rx).await.is_none());
        assert!(matches!(cache.seen(key(2), now), Seen::New(_)));
    }

    #[test]
    fn replies_are_bounded_in_number_and_age() {
        let cache = ReplyCache::default();
        let t0 = Instant::now();
        for xid in 0..(MAX_ENTRIES as u32 + 10) {
            if let Seen::New(r) = cache.seen(key(xid), t0) {
                r.finish(vec![0; 8]);
            }
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        // The oldest went first.
        assert!(matches!(cache.seen(key(0), t0), Seen::New(_)));
        let later = t0 + TTL + Duration::from_secs(1);
        let Seen::New(r) = cache.seen(key(5000), later) else {
            panic!("new call")
        };
        r.finish(vec![0; 8]);
        assert_eq!(cache.len(), 1, "every older reply expired");
    }
}
