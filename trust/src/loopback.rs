//! Free loopback ports for dev clusters and tests.

use std::net::SocketAddr;

/// `count` distinct loopback addresses whose ports are free now (bound at once, then released),
/// for dev clusters and tests that write ports into configs before the nodes start.
///
/// The ports come from below the kernel's ephemeral range (`ip_local_port_range`): a port that
/// `bind(0)` handed out is the kind an outgoing connection of any process may take in the moment
/// between releasing it here and the node binding it ("Address already in use"). Ports below the
/// range are never assigned implicitly, so only another caller of this function could race for
/// them, and each caller starts at a different random point of the range.
pub fn free_loopback_addrs(count: usize) -> std::io::Result<Vec<SocketAddr>> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u16.min(ephemeral_low / 2), ephemeral_low);
    let span = u32::from(high - low);
    let mut seed = [0u8; 4];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    let start = u32::from_le_bytes(seed) % span.max(1);
    let mut listeners = Vec::with_capacity(count);
    for i in 0..span {
        if listeners.len() == count {
            break;
        }
        let port = low + ((start + i) % span) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    if listeners.len() < count {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("only {} free loopback ports in {low}..{high}, {count} needed", listeners.len()),
        ));
    }
    listeners.iter().map(|l| l.local_addr()).collect()
}
