//! A small pool of long-lived, logged-in sessions on one slot, each used by one thread at a
//! time, each with a bounded cache of unwrapped working-key handles.

use super::templates::Usage;
use crate::error::HsmError;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// A session and the working keys unwrapped in it (session objects, gone when it closes).
pub(crate) struct SlotSession {
    pub session: Session,
    pub cache: KeyCache,
    generation: u64,
}

/// Unwrapped-key handles of one session, keyed by (SHA-256 of the wrapped blob, usage), least
/// recently used evicted (and destroyed) beyond the capacity.
pub(crate) struct KeyCache {
    map: HashMap<([u8; 32], Usage), (ObjectHandle, u64)>,
    tick: u64,
    capacity: usize,
}

impl KeyCache {
    fn new(capacity: usize) -> KeyCache {
        KeyCache { map: HashMap::new(), tick: 0, capacity }
    }

    /// The cached handle, marked as just used.
    pub fn get(&mut self, digest: &[u8; 32], usage: Usage) -> Option<ObjectHandle> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&(*digest, usage)).map(|(h, t)| {
            *t = tick;
            *h
        })
    }

    /// Cache `h`; when full, destroy the least recently used handle first.
    pub fn insert(&mut self, session: &Session, digest: [u8; 32], usage: Usage, h: ObjectHandle) {
        if self.map.len() >= self.capacity
            && let Some(oldest) = self.map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k)
            && let Some((old, _)) = self.map.remove(&oldest)
        {
            // A failure leaves a session object behind until the session closes; nothing to do.
            let _ = session.destroy_object(old);
        }
        self.tick += 1;
        self.map.insert((digest, usage), (h, self.tick));
    }
}

struct PoolState {
    idle: Vec<SlotSession>,
    open: usize,
    generation: u64,
}

/// The sessions of one slot.
pub(crate) struct SessionPool {
    state: Mutex<PoolState>,
    cond: Condvar,
    max: usize,
    cache_capacity: usize,
}

impl SessionPool {
    pub fn new(max: usize, cache_capacity: usize) -> SessionPool {
        SessionPool {
            state: Mutex::new(PoolState { idle: Vec::new(), open: 0, generation: 0 }),
            cond: Condvar::new(),
            max,
            cache_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle session, a new one from `open` when fewer than `max` are open, or wait for one.
    pub fn acquire(&self, open: impl FnOnce() -> Result<Session, HsmError>) -> Result<Lease<'_>, HsmError> {
        let mut st = self.lock();
        loop {
            let generation = st.generation;
            while let Some(s) = st.idle.pop() {
                if s.generation == generation {
                    return Ok(Lease { pool: self, s: Some(s), broken: false });
                }
                // Opened before an invalidation: close it (drop) outside the lock below.
                st.open -= 1;
                drop(s);
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return match open() {
                    Ok(session) => Ok(Lease {
                        pool: self,
                        s: Some(SlotSession { session, cache: KeyCache::new(self.cache_capacity), generation }),
                        broken: false,
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.cond.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Close every idle session and make sessions in use close when returned (after a device
    /// error: their handles may be gone).
    pub fn invalidate(&self) {
        let idle = {
            let mut st = self.lock();
            st.generation += 1;
            st.open -= st.idle.len();
            std::mem::take(&mut st.idle)
        };
        drop(idle);
        self.cond.notify_all();
    }
}

/// A session taken from the pool; returned on drop (or closed, when broken).
pub(crate) struct Lease<'a> {
    pool: &'a SessionPool,
    s: Option<SlotSession>,
    broken: bool,
}

impl Lease<'_> {
    /// Close this session instead of returning it.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }
}

impl Deref for Lease<'_> {
    type Target = SlotSession;
    fn deref(&self) -> &SlotSession {
        // Invariant: `s` is `Some` from construction until `drop` takes it.
        self.s.as_ref().expect("lease holds a session until dropped")
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut SlotSession {
        // Invariant: as in `deref`.
        self.s.as_mut().expect("lease holds a session until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(s) = self.s.take() else { return };
        let mut st = self.pool.lock();
        if self.broken || s.generation != st.generation {
            st.open -= 1;
            drop(st);
            drop(s); // closes the session (and its session objects)
        } else {
            st.idle.push(s);
            drop(st);
        }
        self.pool.cond.notify_one();
    }
}
