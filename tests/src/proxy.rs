//! An in-process TCP fault proxy for partition tests.
//!
//! A [`FaultProxy`] listens on a free loopback port and forwards every connection to one target.
//! The cluster fixture puts one proxy on every ordered pair of nodes (node *i* dials node *j*'s
//! Raft service through proxy *i→j*, with the `[dial]` table of *i*'s config), so a test can cut
//! any set of links in one direction or both. A cut link resets the connections it carries and
//! refuses new ones (accepts, then closes at once) until it is healed; nothing in between is
//! buffered, so a healed link starts with fresh connections, as after a real network failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One forwarding link; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// Where it forwards to.
    pub target: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut: live connections watch it and close.
    epoch: watch::Sender<u64>,
    /// Connections refused or reset while cut (for test assertions that the cut was exercised).
    dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Start a proxy to `target` on a free loopback port. Needs a tokio runtime.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        std_listener.set_nonblocking(true).expect("non-blocking proxy socket");
        let addr = std_listener.local_addr().expect("proxy address");
        let listener = TcpListener::from_std(std_listener).expect("proxy listener into tokio");
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (epoch, _) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(listener, target, cut.clone(), epoch.subscribe(), dropped.clone()));
        FaultProxy { addr, target, cut, epoch, dropped, task }
    }

    /// Cut the link: reset live connections and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Heal the link: new connections are forwarded again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Connections refused or reset because the link was cut.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: watch::Receiver<u64>,
    dropped: Arc<AtomicU64>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        if cut.load(Ordering::SeqCst) {
            dropped.fetch_add(1, Ordering::SeqCst);
            drop(inbound);
            continue;
        }
        let mut epoch = epoch.clone();
        epoch.mark_unchanged();
        let dropped = dropped.clone();
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            let Ok(mut outbound) = TcpStream::connect(target).await else { return };
            let _ = outbound.set_nodelay(true);
            let mut inbound = inbound;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = epoch.changed() => { dropped.fetch_add(1, Ordering::SeqCst); }
            }
            // Dropping both ends closes them; the peer sees the connection end.
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn forwards_until_cut_and_again_after_heal() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let echo_addr = echo.local_addr().expect("echo addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = echo.accept().await else { return };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = FaultProxy::start(echo_addr);
        let roundtrip = |addr| async move {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            tokio::time::timeout(std::time::Duration::from_secs(2), s.read_exact(&mut buf)).await.ok()?.ok()?;
            Some(buf)
        };
        assert_eq!(roundtrip(proxy.addr).await, Some(*b"ping"));

        let mut live = TcpStream::connect(proxy.addr).await.expect("connect");
        live.write_all(b"a").await.expect("write");
        let mut one = [0u8; 1];
        live.read_exact(&mut one).await.expect("echo before cut");
        proxy.cut();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), live.read_to_end(&mut rest))
            .await
            .expect("a cut closes live connections");
        assert!(n.map(|n| n == 0).unwrap_or(true), "no data after the cut");
        assert_eq!(roundtrip(proxy.addr).await, None, "a cut link refuses new connections");
        assert!(proxy.dropped() >= 2);

        proxy.heal();
        assert_eq!(roundtrip(proxy.addr).await, Some(*b"ping"));
    }
}
