//! [`HsmPool`]: several slots (of one or several modules) behind one [`Hsm`].
//!
//! Each member slot has its own worker threads (one per configured session) and a job queue. A
//! caller hands a job to a member and waits on a channel with a timeout, because a PKCS#11 call
//! cannot be interrupted: when a member does not answer in time, the caller gives up on it (the
//! call may still finish in the module, and its result is dropped), takes the member out and
//! retries elsewhere. A member that fails with a device-type error is taken out the same way;
//! key-level errors (bad KCV, wrong blob, wrong SMK) are returned at once, since every slot
//! would give the same answer. A health checker probes members that are out (`C_GenerateRandom`)
//! and re-admits them when they answer.
//!
//! ## Keys per token
//!
//! The transport key pair and the SMK live in each token. A multi-slot node keeps one SMK on all
//! members:
//!
//! - [`Hsm::transport_public_key`] is that of the first healthy member in configuration order
//!   (members generate their own pairs as needed; only the first one is published).
//! - Sealed inputs ([`Hsm::form_smk`], [`Hsm::install_smk`], [`Hsm::import_components`]) go to the
//!   members in configuration order until one can open them: only the member whose transport key
//!   they were sealed to can.
//! - After `form_smk`/`install_smk`, when the pool opens, and when a member is re-admitted, every
//!   healthy member lacking the SMK gets it from a member that has it: `wrap_smk_for(member's own
//!   transport key)` then `install_smk` on the member ([`PoolConfig::sync_smk`], on by default).
//!   The key never leaves the HSMs in clear. A member holding a *different* SMK is kept out.
//! - Operations on a [`WrappedKey`] go to healthy members holding the SMK it is wrapped under.
//! - An SMK rotation forms the next SMK on the member that opens the components and gives it to
//!   every other healthy member the same way (wrapped to the member's transport key);
//!   [`Hsm::next_smk_kcv`] names it only when every healthy member holds it, and
//!   [`Hsm::promote_next_smk`] promotes it on every healthy member. A member that was out during
//!   the promotion holds the pool's SMK as its next one when it answers again: it is promoted
//!   then and re-admitted.

use crate::config::PoolConfig;
use crate::error::HsmError;
use crate::observer::HostPathObserver;
use crate::payment::{CrtPadding, DerivedKey, GeneratedPin, IccKeyPair, PinRequest};
use crate::pkcs11::Pkcs11Hsm;
use crate::tr31::Tr31Header;
use crate::types::{HsmInfo, Kcv, KeyAlg, KeyUse, RsaPublic, SealedComponent, WrappedKey, WrappedRsaKey};
use crate::{Hsm, Zeroizing};
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whether a member takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    /// Takes work.
    Healthy,
    /// Taken out after a device error or a timeout (or holding another SMK); probed until it
    /// answers again.
    Out,
}

/// State of one member, for `quill cluster status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    /// Position in the configuration.
    pub index: usize,
    /// Module path.
    pub module: PathBuf,
    /// Slot id.
    pub slot: u64,
    /// Token label.
    pub token_label: String,
    /// Healthy or out.
    pub state: SlotState,
    /// Milliseconds in the current state.
    pub state_for_ms: u64,
    /// Operations given to this member.
    pub ops: u64,
    /// Operations that failed on it (any error, timeouts included).
    pub errors: u64,
    /// Operations running or queued on it now.
    pub in_flight: usize,
    /// The last error (device-level or not).
    pub last_error: Option<String>,
    /// KCV of the SMK it holds, when known.
    pub smk_kcv: Option<Kcv>,
}

type Job = Box<dyn FnOnce(&Pkcs11Hsm) + Send>;
/// An operation that can be retried on another member.
type Retryable<T> = Arc<dyn Fn(&Pkcs11Hsm) -> Result<T, HsmError> + Send + Sync>;
type Probe = Receiver<Result<Option<Kcv>, HsmError>>;

struct MemberState {
    healthy: bool,
    since: Instant,
    last_error: Option<String>,
    /// `None`: not known; `Some(None)`: holds no SMK.
    smk: Option<Option<Kcv>>,
    probe: Option<Probe>,
}

struct Member {
    index: usize,
    hsm: Arc<Pkcs11Hsm>,
    jobs: Sender<Job>,
    in_flight: Arc<AtomicUsize>,
    ops: AtomicU64,
    errors: AtomicU64,
    state: Mutex<MemberState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Member {
    fn state(&self) -> MutexGuard<'_, MemberState> {
        lock(&self.state)
    }

    fn healthy(&self) -> bool {
        self.state().healthy
    }

    fn smk(&self) -> Option<Option<Kcv>> {
        self.state().smk.clone()
    }
}

/// Decrements the in-flight count when a job ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Inner {
    members: Vec<Member>,
    op_timeout: Duration,
    keygen_timeout: Duration,
    probe_interval: Duration,
    sync_smk: bool,
    rr: AtomicUsize,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

/// Several slots behind one [`Hsm`]; see the module documentation for the failover rules and how
/// the SMK is kept on every member.
pub struct HsmPool {
    inner: Arc<Inner>,
    checker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HsmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.inner.members.iter().map(|m| m.hsm.slot_ref().to_string())).finish()
    }
}

impl HsmPool {
    /// Open every configured slot (a slot that cannot be opened fails the whole pool: a
    /// configuration error should be loud), start the workers and the health checker, learn which
    /// SMK each member holds, and install it on members that lack it (when `sync_smk`).
    pub fn open(config: &PoolConfig, observer: Arc<dyn HostPathObserver>) -> Result<HsmPool, HsmError> {
        if config.slots.is_empty() {
            return Err(HsmError::Config { reason: "an HSM pool needs at least one slot".to_owned() });
        }
        let mut members = Vec::with_capacity(config.slots.len());
        for (index, sc) in config.slots.iter().enumerate() {
            let hsm = Arc::new(Pkcs11Hsm::open(sc, observer.clone())?);
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for n in 0..sc.sessions {
                let (hsm, rx) = (hsm.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("quill-hsm-{index}-{n}"))
                    .spawn(move || worker(&hsm, &rx))
                    .map_err(|e| HsmError::Config { reason: format!("cannot start an HSM worker thread: {e}") })?;
            }
            members.push(Member {
                index,
                hsm,
                jobs: tx,
                in_flight: Arc::new(AtomicUsize::new(0)),
                ops: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                state: Mutex::new(MemberState {
                    healthy: true,
                    since: Instant::now(),
                    last_error: None,
                    smk: None,
                    probe: None,
                }),
            });
        }
        let inner = Arc::new(Inner {
            members,
            op_timeout: config.op_timeout(),
            keygen_timeout: config.keygen_timeout(),
            probe_interval: config.probe_interval(),
            sync_smk: config.sync_smk,
            rr: AtomicUsize::new(0),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        });
        for m in &inner.members {
            // Errors are recorded on the member (taken out when device-level).
            let _ = inner.refresh_smk(m);
        }
        inner.reconcile_smk();
        let checker_inner = inner.clone();
        let checker = std::thread::Builder::new()
            .name("quill-hsm-health".to_owned())
            .spawn(move || checker_inner.health_loop())
            .map_err(|e| HsmError::Config { reason: format!("cannot start the HSM health checker: {e}") })?;
        Ok(HsmPool { inner, checker: Some(checker) })
    }

    /// Per-member state.
    pub fn status(&self) -> Vec<SlotStatus> {
        self.inner
            .members
            .iter()
            .map(|m| {
                let st = m.state();
                let info = m.hsm.info();
                SlotStatus {
                    index: m.index,
                    module: info.module.clone(),
                    slot: info.slot,
                    token_label: info.token_label.clone(),
                    state: if st.healthy { SlotState::Healthy } else { SlotState::Out },
                    state_for_ms: u64::try_from(st.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ops: m.ops.load(Ordering::SeqCst),
                    errors: m.errors.load(Ordering::SeqCst),
                    in_flight: m.in_flight.load(Ordering::SeqCst),
                    last_error: st.last_error.clone(),
                    smk_kcv: st.smk.clone().flatten(),
                }
            })
            .collect()
    }
}

impl Drop for HsmPool {
    fn drop(&mut self) {
        *lock(&self.inner.stop) = true;
        self.inner.stop_cv.notify_all();
        if let Some(t) = self.checker.take() {
            let _ = t.join();
        }
        // Workers end when the last `Inner` (holding the job senders) is dropped; a worker stuck
        // in a call to a dead slot ends when that call returns.
    }
}

fn worker(hsm: &Pkcs11Hsm, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = lock(rx).recv();
        match job {
            Ok(job) => job(hsm),
            Err(_) => return,
        }
    }
}

impl Inner {
    /// Queue `f` on member `m`; the receiver gets its result unless `cancel` is set before it
    /// starts.
    fn submit<T: Send + 'static>(
        &self,
        m: &Member,
        op: &'static str,
        f: impl FnOnce(&Pkcs11Hsm) -> Result<T, HsmError> + Send + 'static,
    ) -> (Receiver<Result<T, HsmError>>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        m.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(m.in_flight.clone());
        let at = m.hsm.slot_ref().clone();
        let job: Job = Box::new(move |hsm: &Pkcs11Hsm| {
            let _guard = guard;
            if c.load(Ordering::SeqCst) {
                return;
            }
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(hsm))).unwrap_or_else(|_| {
                Err(HsmError::Unavailable { operation: op, reason: "the HSM worker panicked".to_owned(), at })
            });
            let _ = tx.send(r);
        });
        if let Err(mpsc::SendError(job)) = m.jobs.send(job) {
            // No worker left (cannot happen while `Inner` lives); dropping the job drops `tx`, so
            // the caller sees a disconnected channel.
            drop(job);
        }
        (rx, cancel)
    }

    /// Run `f` on member `m` and wait at most `timeout`.
    fn call<T: Send + 'static>(
        &self,
        m: &Member,
        op: &'static str,
        timeout: Duration,
        f: impl FnOnce(&Pkcs11Hsm) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, HsmError> {
        m.ops.fetch_add(1, Ordering::SeqCst);
        let (rx, cancel) = self.submit(m, op, f);
        let r = match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                cancel.store(true, Ordering::SeqCst);
                Err(HsmError::Timeout { operation: op, after: timeout, at: m.hsm.slot_ref().clone() })
            }
            Err(RecvTimeoutError::Disconnected) => Err(HsmError::Unavailable {
                operation: op,
                reason: "the HSM worker is gone".to_owned(),
                at: m.hsm.slot_ref().clone(),
            }),
        };
        if let Err(e) = &r {
            m.errors.fetch_add(1, Ordering::SeqCst);
            if e.is_device_error() {
                self.take_out(m, e);
            } else {
                m.state().last_error = Some(e.to_string());
            }
        }
        r
    }

    fn take_out(&self, m: &Member, e: &HsmError) {
        let mut st = m.state();
        if st.healthy {
            st.healthy = false;
            st.since = Instant::now();
            tracing::warn!(slot = %m.hsm.slot_ref(), error = %e, "HSM slot taken out of the pool");
        }
        st.last_error = Some(e.to_string());
    }

    /// The SMK the pool uses: that of the first healthy member (in configuration order) that
    /// holds one.
    fn pool_smk(&self) -> Option<Kcv> {
        self.members.iter().filter(|m| m.healthy()).find_map(|m| m.smk().flatten())
    }

    /// A healthy member not tried yet, preferring those holding `smk` (when given), then the
    /// least busy, ties broken round robin.
    fn pick(&self, tried: &[bool], smk: Option<&Kcv>) -> Option<&Member> {
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let n = self.members.len();
        let candidates: Vec<&Member> =
            (0..n).map(|i| &self.members[(start + i) % n]).filter(|m| !tried[m.index] && m.healthy()).collect();
        let holding: Vec<&Member> = match smk {
            Some(k) => candidates.iter().copied().filter(|m| m.smk().flatten().as_ref() == Some(k)).collect(),
            None => Vec::new(),
        };
        let set = if holding.is_empty() { candidates } else { holding };
        set.into_iter().min_by_key(|m| m.in_flight.load(Ordering::SeqCst))
    }

    /// Run `f` on one healthy member; on a device error or timeout, on another.
    fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        timeout: Duration,
        smk: Option<&Kcv>,
        f: Retryable<T>,
    ) -> Result<T, HsmError> {
        let mut tried = vec![false; self.members.len()];
        let mut last = None;
        while let Some(m) = self.pick(&tried, smk) {
            tried[m.index] = true;
            let f = f.clone();
            match self.call(m, op, timeout, move |h| f(h)) {
                Err(e) if e.is_device_error() => last = Some(Box::new(e)),
                r => return r,
            }
        }
        Err(HsmError::NoHealthySlot { operation: op, last })
    }

    /// Run `f` (an operation on inputs sealed to one member's transport key) on the healthy
    /// members in configuration order until one can open the inputs.
    fn run_sealed<T: Send + 'static>(&self, op: &'static str, f: Retryable<T>) -> Result<(T, usize), HsmError> {
        let mut cannot_open = None;
        let mut device = None;
        for m in self.members.iter().filter(|m| m.healthy()) {
            let f = f.clone();
            match self.call(m, op, self.op_timeout, move |h| f(h)) {
                Ok(v) => return Ok((v, m.index)),
                Err(e @ HsmError::CannotOpen { .. }) => {
                    cannot_open.get_or_insert(e);
                }
                Err(e) if e.is_device_error() => {
                    device.get_or_insert(Box::new(e));
                }
                Err(e) => return Err(e),
            }
        }
        match (device, cannot_open) {
            // The member the inputs were sealed to may be the one that failed.
            (Some(d), _) => Err(HsmError::NoHealthySlot { operation: op, last: Some(d) }),
            (None, Some(e)) => Err(e),
            (None, None) => Err(HsmError::NoHealthySlot { operation: op, last: None }),
        }
    }

    /// Ask member `m` which SMK it holds.
    fn refresh_smk(&self, m: &Member) -> Result<Option<Kcv>, HsmError> {
        let smk = self.call(m, "smk_kcv", self.op_timeout, |h| h.smk_kcv())?;
        m.state().smk = Some(smk.clone());
        Ok(smk)
    }

    /// Give member `target` the SMK `kcv` held by another healthy member, wrapped to `target`'s
    /// own transport key.
    fn install_on(&self, target: &Member, kcv: &Kcv) -> Result<(), HsmError> {
        let source = self
            .members
            .iter()
            .find(|m| m.index != target.index && m.healthy() && m.smk().flatten().as_ref() == Some(kcv))
            .ok_or(HsmError::NoHealthySlot { operation: "sync_smk", last: None })?;
        let peer = self.call(target, "sync_smk", self.keygen_timeout, |h| h.transport_public_key())?;
        let sealed = self.call(source, "sync_smk", self.op_timeout, move |h| h.wrap_smk_for(&peer))?;
        let k = kcv.clone();
        self.call(target, "sync_smk", self.op_timeout, move |h| h.install_smk(&sealed, &k))?;
        target.state().smk = Some(Some(kcv.clone()));
        tracing::info!(slot = %target.hsm.slot_ref(), smk_kcv = %kcv, "SMK installed on pool member");
        Ok(())
    }

    /// Keep healthy members on one SMK: take out members holding another, install it where
    /// missing (when `sync_smk`).
    fn reconcile_smk(&self) {
        let Some(kcv) = self.pool_smk() else { return };
        for m in self.members.iter().filter(|m| m.healthy()) {
            match m.smk() {
                Some(Some(k)) if k != kcv => self.keep_out_other_smk(m, &k, &kcv),
                Some(None) if self.sync_smk => {
                    if let Err(e) = self.install_on(m, &kcv) {
                        tracing::warn!(slot = %m.hsm.slot_ref(), error = %e, "could not install the SMK on a pool member");
                        m.state().last_error = Some(e.to_string());
                    }
                }
                _ => {}
            }
        }
    }

    fn keep_out_other_smk(&self, m: &Member, holds: &Kcv, pool: &Kcv) {
        let mut st = m.state();
        if st.healthy {
            st.healthy = false;
            st.since = Instant::now();
        }
        st.last_error = Some(format!("holds SMK {holds} but the pool uses SMK {pool}"));
        tracing::error!(slot = %m.hsm.slot_ref(), holds = %holds, pool = %pool, "HSM slot holds another SMK; kept out of the pool");
    }

    /// Probe members that are out; re-admit those that answer (installing the SMK if they lack
    /// it), until the pool is dropped.
    fn health_loop(&self) {
        loop {
            {
                let stop = lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) =
                    self.stop_cv.wait_timeout(stop, self.probe_interval).unwrap_or_else(PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            for m in &self.members {
                self.check_member(m);
            }
        }
    }

    fn check_member(&self, m: &Member) {
        let outcome = {
            let mut st = m.state();
            if st.healthy {
                return;
            }
            match st.probe.as_ref().map(Receiver::try_recv) {
                // Still waiting: a dead slot answers when it answers.
                Some(Err(TryRecvError::Empty)) => return,
                Some(Ok(r)) => {
                    st.probe = None;
                    Some(r)
                }
                Some(Err(TryRecvError::Disconnected)) => {
                    st.probe = None;
                    None
                }
                None => {
                    let (rx, _) = self.submit(m, "probe", |h| {
                        h.probe()?;
                        h.smk_kcv()
                    });
                    st.probe = Some(rx);
                    None
                }
            }
        };
        match outcome {
            Some(Ok(smk)) => self.readmit(m, smk),
            Some(Err(e)) => m.state().last_error = Some(e.to_string()),
            None => {}
        }
    }

    fn readmit(&self, m: &Member, mut smk: Option<Kcv>) {
        let pool = self.pool_smk();
        match (&pool, &smk) {
            (Some(p), Some(s)) if p != s => {
                // Out while the pool promoted a rotation's next SMK: it holds that as its next
                // one, and is promoted now. Any other SMK keeps it out.
                match self.promote_late(m, p) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.keep_out_other_smk(m, s, p);
                        return;
                    }
                    Err(e) => {
                        m.state().last_error = Some(format!("promoting the rotated SMK {p}: {e}"));
                        return;
                    }
                }
                smk = Some(p.clone());
                m.state().smk = Some(smk.clone());
            }
            (Some(p), None) if self.sync_smk => {
                if let Err(e) = self.install_on(m, p) {
                    m.state().last_error = Some(format!("re-admission: {e}"));
                    return;
                }
            }
            _ => {}
        }
        let mut st = m.state();
        st.healthy = true;
        st.since = Instant::now();
        if st.smk.clone().flatten().is_none() {
            st.smk = Some(smk);
        }
        tracing::info!(slot = %m.hsm.slot_ref(), "HSM slot re-admitted to the pool");
    }

    /// Give the next SMK `kcv`, formed on member `source`, to every other healthy member.
    fn sync_next(&self, source: usize, kcv: &Kcv) -> Result<(), HsmError> {
        let Some(src) = self.members.get(source) else { return Ok(()) };
        for m in self.members.iter().filter(|m| m.index != source && m.healthy()) {
            let peer = self.call(m, "sync_next_smk", self.keygen_timeout, |h| h.transport_public_key())?;
            let sealed = self.call(src, "sync_next_smk", self.op_timeout, move |h| h.wrap_next_smk_for(&peer))?;
            let k = kcv.clone();
            self.call(m, "sync_next_smk", self.op_timeout, move |h| h.install_next_smk(&sealed, &k))?;
            tracing::info!(slot = %m.hsm.slot_ref(), next_smk_kcv = %kcv, "next SMK installed on pool member");
        }
        Ok(())
    }

    /// Promote member `m`'s next SMK if it is `pool` (the SMK the pool promoted while `m` was
    /// out); whether it was.
    fn promote_late(&self, m: &Member, pool: &Kcv) -> Result<bool, HsmError> {
        let k = pool.clone();
        let promoted = self.call(m, "promote_next_smk", self.op_timeout, move |h| {
            if h.next_smk_kcv()?.as_ref() != Some(&k) {
                return Ok(false);
            }
            h.promote_next_smk(&k).map(|()| true)
        })?;
        if promoted {
            tracing::info!(slot = %m.hsm.slot_ref(), smk_kcv = %pool, "rotated SMK promoted on a re-admitted pool member");
        }
        Ok(promoted)
    }

    /// After forming or installing the SMK on member `index`: make the others hold it too.
    fn after_smk_change(&self, index: usize, kcv: &Kcv) {
        if let Some(m) = self.members.get(index) {
            m.state().smk = Some(Some(kcv.clone()));
        }
        for m in self.members.iter().filter(|m| m.index != index && m.healthy()) {
            if m.smk().is_none() {
                let _ = self.refresh_smk(m);
            }
        }
        self.reconcile_smk();
    }
}

impl Hsm for HsmPool {
    fn describe(&self) -> HsmInfo {
        HsmInfo { slots: self.inner.members.iter().map(|m| m.hsm.info().clone()).collect() }
    }

    fn transport_public_key(&self) -> Result<RsaPublic, HsmError> {
        let inner = &self.inner;
        let mut last = None;
        for m in inner.members.iter().filter(|m| m.healthy()) {
            match inner.call(m, "transport_public_key", inner.keygen_timeout, |h| h.transport_public_key()) {
                Err(e) if e.is_device_error() => last = Some(Box::new(e)),
                r => return r,
            }
        }
        Err(HsmError::NoHealthySlot { operation: "transport_public_key", last })
    }

    fn form_smk(&self, components: &[SealedComponent], expected: &[Kcv]) -> Result<Kcv, HsmError> {
        // If the pool already holds an SMK, every healthy member must hold it first, so the
        // member that opens the components compares with it instead of forming a second one.
        self.inner.reconcile_smk();
        let (c, e) = (components.to_vec(), expected.to_vec());
        let (kcv, index) = self.inner.run_sealed("form_smk", Arc::new(move |h: &Pkcs11Hsm| h.form_smk(&c, &e)))?;
        self.inner.after_smk_change(index, &kcv);
        Ok(kcv)
    }

    fn smk_kcv(&self) -> Result<Option<Kcv>, HsmError> {
        if let Some(k) = self.inner.pool_smk() {
            return Ok(Some(k));
        }
        let inner = &self.inner;
        let mut last = None;
        let mut answered = false;
        for m in inner.members.iter().filter(|m| m.healthy()) {
            match inner.refresh_smk(m) {
                Ok(Some(k)) => return Ok(Some(k)),
                Ok(None) => answered = true,
                Err(e) if e.is_device_error() => last = Some(Box::new(e)),
                Err(e) => return Err(e),
            }
        }
        if answered { Ok(None) } else { Err(HsmError::NoHealthySlot { operation: "smk_kcv", last }) }
    }

    fn wrap_smk_for(&self, peer: &RsaPublic) -> Result<Vec<u8>, HsmError> {
        let smk = self.inner.pool_smk();
        let peer = peer.clone();
        self.inner.run(
            "wrap_smk_for",
            self.inner.op_timeout,
            smk.as_ref(),
            Arc::new(move |h: &Pkcs11Hsm| h.wrap_smk_for(&peer)),
        )
    }

    fn install_smk(&self, sealed: &[u8], expected: &Kcv) -> Result<(), HsmError> {
        self.inner.reconcile_smk();
        let (s, k) = (sealed.to_vec(), expected.clone());
        let ((), index) = self.inner.run_sealed("install_smk", Arc::new(move |h: &Pkcs11Hsm| h.install_smk(&s, &k)))?;
        self.inner.after_smk_change(index, expected);
        Ok(())
    }

    fn next_smk_kcv(&self) -> Result<Option<Kcv>, HsmError> {
        let inner = &self.inner;
        let mut agreed: Option<Option<Kcv>> = None;
        let mut last = None;
        for m in inner.members.iter().filter(|m| m.healthy()) {
            match inner.call(m, "next_smk_kcv", inner.op_timeout, |h| h.next_smk_kcv()) {
                Ok(k) => match &agreed {
                    None => agreed = Some(k),
                    // Members disagree: none is the pool's until it is formed (and synced) again.
                    Some(a) if *a != k => return Ok(None),
                    Some(_) => {}
                },
                Err(e) if e.is_device_error() => last = Some(Box::new(e)),
                Err(e) => return Err(e),
            }
        }
        agreed.ok_or(HsmError::NoHealthySlot { operation: "next_smk_kcv", last })
    }

    fn form_next_smk(&self, components: &[SealedComponent], expected: &[Kcv]) -> Result<Kcv, HsmError> {
        let (c, e) = (components.to_vec(), expected.to_vec());
        let (kcv, index) =
            self.inner.run_sealed("form_next_smk", Arc::new(move |h: &Pkcs11Hsm| h.form_next_smk(&c, &e)))?;
        self.inner.sync_next(index, &kcv)?;
        Ok(kcv)
    }

    fn translate_to_next(&self, key: &WrappedKey) -> Result<WrappedKey, HsmError> {
        let k = key.clone();
        self.inner.run(
            "translate_to_next",
            self.inner.op_timeout,
            Some(&key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.translate_to_next(&k)),
        )
    }

    fn rewrap_rsa_to_next(&self, key: &WrappedRsaKey) -> Result<WrappedRsaKey, HsmError> {
        let k = key.clone();
        self.inner.run(
            "rewrap_rsa_to_next",
            self.inner.op_timeout,
            Some(&key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.rewrap_rsa_to_next(&k)),
        )
    }

    fn promote_next_smk(&self, expected: &Kcv) -> Result<(), HsmError> {
        let inner = &self.inner;
        let mut done = 0;
        for m in inner.members.iter().filter(|m| m.healthy()) {
            let k = expected.clone();
            inner.call(m, "promote_next_smk", inner.op_timeout, move |h| h.promote_next_smk(&k))?;
            m.state().smk = Some(Some(expected.clone()));
            done += 1;
        }
        if done == 0 {
            return Err(HsmError::NoHealthySlot { operation: "promote_next_smk", last: None });
        }
        Ok(())
    }

    fn generate_key(&self, alg: KeyAlg, key_use: KeyUse) -> Result<WrappedKey, HsmError> {
        let smk = self.inner.pool_smk();
        self.inner.run(
            "generate_key",
            self.inner.op_timeout,
            smk.as_ref(),
            Arc::new(move |h: &Pkcs11Hsm| h.generate_key(alg, key_use.clone())),
        )
    }

    fn generate_for_transport(
        &self,
        alg: KeyAlg,
        key_use: KeyUse,
        peer: &RsaPublic,
    ) -> Result<(WrappedKey, Vec<u8>), HsmError> {
        let smk = self.inner.pool_smk();
        let peer = peer.clone();
        self.inner.run(
            "generate_for_transport",
            self.inner.op_timeout,
            smk.as_ref(),
            Arc::new(move |h: &Pkcs11Hsm| h.generate_for_transport(alg, key_use.clone(), &peer)),
        )
    }

    fn receive_transported(&self, alg: KeyAlg, key_use: KeyUse, sealed: &[u8]) -> Result<WrappedKey, HsmError> {
        let s = sealed.to_vec();
        self.inner
            .run_sealed(
                "receive_transported",
                Arc::new(move |h: &Pkcs11Hsm| h.receive_transported(alg, key_use.clone(), &s)),
            )
            .map(|(key, _)| key)
    }

    fn import_components(
        &self,
        alg: KeyAlg,
        key_use: KeyUse,
        components: &[SealedComponent],
        expected: &[Kcv],
    ) -> Result<WrappedKey, HsmError> {
        let (c, e) = (components.to_vec(), expected.to_vec());
        self.inner
            .run_sealed(
                "import_components",
                Arc::new(move |h: &Pkcs11Hsm| h.import_components(alg, key_use.clone(), &c, &e)),
            )
            .map(|(w, _)| w)
    }

    fn kcv(&self, key: &WrappedKey) -> Result<Kcv, HsmError> {
        let k = key.clone();
        self.inner.run("kcv", self.inner.op_timeout, Some(&key.smk_kcv), Arc::new(move |h: &Pkcs11Hsm| h.kcv(&k)))
    }

    fn hmac_sha256(&self, key: &WrappedKey, data: &[u8]) -> Result<[u8; 32], HsmError> {
        let (k, d) = (key.clone(), data.to_vec());
        self.inner.run(
            "hmac_sha256",
            self.inner.op_timeout,
            Some(&key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.hmac_sha256(&k, &d)),
        )
    }

    fn node_audit_mac(&self, data: &[u8]) -> Result<(Kcv, [u8; 32]), HsmError> {
        let d = data.to_vec();
        self.inner.run(
            "node_audit_mac",
            self.inner.op_timeout,
            None,
            Arc::new(move |h: &Pkcs11Hsm| h.node_audit_mac(&d)),
        )
    }

    fn node_audit_verify(&self, kcv: &Kcv, data: &[u8], mac: &[u8; 32]) -> Result<Option<bool>, HsmError> {
        // Each member holds its own audit key: ask every healthy one until one holds `kcv`.
        let inner = &self.inner;
        let mut last = None;
        let mut asked = false;
        for m in inner.members.iter().filter(|m| m.healthy()) {
            let (k, d, mac) = (kcv.clone(), data.to_vec(), *mac);
            match inner.call(m, "node_audit_verify", inner.op_timeout, move |h| h.node_audit_verify(&k, &d, &mac)) {
                Ok(Some(ok)) => return Ok(Some(ok)),
                Ok(None) => asked = true,
                Err(e) if e.is_device_error() => last = Some(Box::new(e)),
                Err(e) => return Err(e),
            }
        }
        match (asked, last) {
            (false, last) => Err(HsmError::NoHealthySlot { operation: "node_audit_verify", last }),
            (true, _) => Ok(None),
        }
    }

    fn seal(&self, key: &WrappedKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        let (k, a, p) = (key.clone(), aad.to_vec(), Zeroizing::new(plaintext.to_vec()));
        self.inner.run(
            "seal",
            self.inner.op_timeout,
            Some(&key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.seal(&k, &a, &p)),
        )
    }

    fn open(&self, key: &WrappedKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let (k, a, s) = (key.clone(), aad.to_vec(), sealed.to_vec());
        self.inner.run(
            "open",
            self.inner.op_timeout,
            Some(&key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.open(&k, &a, &s)),
        )
    }

    fn tr31_import(&self, kbpk: &WrappedKey, block: &str) -> Result<(Tr31Header, WrappedKey), HsmError> {
        let (k, b) = (kbpk.clone(), block.to_owned());
        self.inner.run(
            "tr31_import",
            self.inner.op_timeout,
            Some(&kbpk.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.tr31_import(&k, &b)),
        )
    }

    fn tr31_export(
        &self,
        kbpk: &WrappedKey,
        key: &WrappedKey,
        usage: &str,
        exportable: bool,
    ) -> Result<String, HsmError> {
        let (k, w, u) = (kbpk.clone(), key.clone(), usage.to_owned());
        self.inner.run(
            "tr31_export",
            self.inner.op_timeout,
            Some(&kbpk.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.tr31_export(&k, &w, &u, exportable)),
        )
    }

    fn derive_icc_master_key(
        &self,
        imk: &WrappedKey,
        pan: &str,
        psn: &str,
        transport: &WrappedKey,
    ) -> Result<DerivedKey, HsmError> {
        let (k, p, n, t) = (imk.clone(), pan.to_owned(), psn.to_owned(), transport.clone());
        self.inner.run(
            "derive_icc_master_key",
            self.inner.op_timeout,
            Some(&imk.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.derive_icc_master_key(&k, &p, &n, &t)),
        )
    }

    fn cvv(&self, cvk: &WrappedKey, pan: &str, expiry_yymm: &str, service_code: &str) -> Result<String, HsmError> {
        let (k, p, e, c) = (cvk.clone(), pan.to_owned(), expiry_yymm.to_owned(), service_code.to_owned());
        self.inner.run(
            "cvv",
            self.inner.op_timeout,
            Some(&cvk.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.cvv(&k, &p, &e, &c)),
        )
    }

    fn generate_pin(&self, request: &PinRequest) -> Result<GeneratedPin, HsmError> {
        let r = request.clone();
        self.inner.run(
            "generate_pin",
            self.inner.op_timeout,
            Some(&request.pin_key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.generate_pin(&r)),
        )
    }

    fn translate_pin_block(
        &self,
        from_key: &WrappedKey,
        from_format: u8,
        to_key: &WrappedKey,
        to_format: u8,
        pan: &str,
        block: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let (f, t, p, b) = (from_key.clone(), to_key.clone(), pan.to_owned(), block.to_vec());
        self.inner.run(
            "translate_pin_block",
            self.inner.op_timeout,
            Some(&from_key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.translate_pin_block(&f, from_format, &t, to_format, &p, &b)),
        )
    }

    fn generate_icc_rsa_key(
        &self,
        bits: u32,
        exponent: u32,
        transport: &WrappedKey,
        padding: CrtPadding,
    ) -> Result<IccKeyPair, HsmError> {
        let t = transport.clone();
        self.inner.run(
            "generate_icc_rsa_key",
            self.inner.keygen_timeout,
            Some(&transport.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.generate_icc_rsa_key(bits, exponent, &t, padding)),
        )
    }

    fn generate_rsa_key_pair(&self, bits: u32, exponent: u32, owner: Option<&str>) -> Result<WrappedRsaKey, HsmError> {
        let owner = owner.map(str::to_owned);
        self.inner.run(
            "generate_rsa_key_pair",
            self.inner.keygen_timeout,
            None,
            Arc::new(move |h: &Pkcs11Hsm| h.generate_rsa_key_pair(bits, exponent, owner.as_deref())),
        )
    }

    fn rsa_sign_raw(&self, key: &WrappedRsaKey, block: &[u8]) -> Result<Vec<u8>, HsmError> {
        let (k, b) = (key.clone(), block.to_vec());
        self.inner.run(
            "rsa_sign_raw",
            self.inner.op_timeout,
            Some(&key.smk_kcv),
            Arc::new(move |h: &Pkcs11Hsm| h.rsa_sign_raw(&k, &b)),
        )
    }
}
