//! Quill nodes as containers on the machine's Docker engine (issue 15).
//!
//! No image can be pulled: the node image is imported from a staged root (`docker import`, the
//! engine's `POST /images/create?fromSrc=-`) holding `quilld`, hsm-sim's module, libfaketime's
//! preload library when the host has it (clock skew: the containers share the host kernel's
//! clock, so a node's wall clock is moved in its process, as for processes) and the shared
//! libraries `ldd` lists for them, and nothing else: no shell, no package manager. It is tagged
//! by a hash of those files, so a rerun with the same binaries finds it and builds nothing.
//!
//! Each cluster gets its own bridge network with a /24 of its own, and each node a fixed address
//! on it (`.10 + id`), so a node killed and started again, or disconnected and reconnected, comes
//! back where the others know it. A node's directory (config, TLS files, hsm-sim tokens, data) is
//! bind-mounted at the same path as on the host, so the files the harness writes are the ones the
//! node reads. The host reaches every node at its address directly (Linux bridge).
//!
//! Every call goes through `bollard` (re-exported by `testcontainers`), on a runtime of its own:
//! the harness's methods are synchronous, as they are for processes.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use testcontainers::bollard::Docker;
use testcontainers::bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig,
};
use testcontainers::bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptions, KillContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use tokio_stream::StreamExt as _;

/// Where the image keeps `quilld`.
pub const QUILLD: &str = "/usr/local/bin/quilld";
/// Where the image keeps hsm-sim's PKCS#11 module (the path node configs name).
pub const SIM_MODULE: &str = "/usr/local/lib/libquill_hsm_sim.so";
/// The repository of node images.
pub const IMAGE_REPO: &str = "quill-node";
/// The label every container and network of the harness carries (its value: the cluster's name).
pub const LABEL: &str = "quill-test";

/// The local Docker engine, or why there is none.
pub struct Engine {
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    docker: Docker,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Engines are dropped inside the tests' async runtimes, where a runtime may not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

/// A cluster's network: its name and the first three octets of its /24.
#[derive(Debug, Clone)]
pub struct Net {
    pub name: String,
    pub prefix: [u8; 3],
}

impl Net {
    /// The fixed address of node `id` (`.10 + id`).
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 10 + u8::try_from(id).expect("node id below 245"))
    }
}

/// How a node container is made.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Container name.
    pub name: String,
    /// Its fixed address.
    pub ip: Ipv4Addr,
    /// `quilld`'s arguments.
    pub args: Vec<String>,
    /// `NAME=value` environment.
    pub env: Vec<String>,
    /// Host directories mounted read-write at the same path.
    pub dirs: Vec<PathBuf>,
}

impl Engine {
    /// The engine behind the local socket, if one answers (API version negotiated: the engine
    /// here is Docker 20.10, API 1.41).
    pub fn connect() -> Result<Engine, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for the Docker client: {e}"))?;
        let docker: Result<Docker, String> = std::thread::scope(|s| {
            s.spawn(|| {
                rt.block_on(async {
                    let d = Docker::connect_with_local_defaults().map_err(|e| format!("Docker socket: {e}"))?;
                    let d = tokio::time::timeout(Duration::from_secs(5), d.negotiate_version())
                        .await
                        .map_err(|_| "the Docker engine did not answer in 5 s".to_owned())?
                        .map_err(|e| format!("no Docker engine answers: {e}"))?;
                    d.ping().await.map_err(|e| format!("Docker ping: {e}"))?;
                    Ok::<_, String>(d)
                })
            })
            .join()
            .map_err(|_| "the Docker client panicked".to_owned())?
        });
        match docker {
            Ok(docker) => Ok(Engine { rt: Some(rt), docker }),
            Err(e) => {
                rt.shutdown_background();
                Err(e)
            }
        }
    }

    /// The engine, or `None` after printing one line saying why the caller skips.
    pub fn or_skip(test: &str) -> Option<Engine> {
        match Engine::connect() {
            Ok(e) => Some(e),
            Err(why) => {
                eprintln!("SKIP {test}: {why}");
                None
            }
        }
    }

    /// The client (for calls this module does not wrap).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Run `f` on the engine's runtime, from any thread (also from inside another runtime).
    pub fn block<T: Send>(&self, f: impl Future<Output = T> + Send) -> T {
        let rt = self.rt.as_ref().expect("the engine's runtime");
        std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join().expect("a Docker call panicked"))
    }

    /// The node image for the `quilld` and hsm-sim module in `bin_dir`, imported now if the engine
    /// does not have it yet: `quill-node:<16 hex digits of the files' hash>`.
    pub fn node_image(&self, bin_dir: &Path) -> Result<String, String> {
        let files = image_files(bin_dir)?;
        let mut h = Sha256::new();
        for (inside, host) in &files {
            h.update(inside.as_bytes());
            h.update([0]);
            h.update(std::fs::read(host).map_err(|e| format!("{}: {e}", host.display()))?);
        }
        let tag = hex::encode(&h.finalize()[..8]);
        let image = format!("{IMAGE_REPO}:{tag}");
        if self.block(self.docker.inspect_image(&image)).is_ok() {
            return Ok(image);
        }
        let root = tempfile::tempdir().map_err(|e| format!("staging dir: {e}"))?;
        for (inside, host) in &files {
            let to = root.path().join(inside.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("a file path")).map_err(|e| format!("{}: {e}", to.display()))?;
            std::fs::copy(host, &to).map_err(|e| format!("{} -> {}: {e}", host.display(), to.display()))?;
        }
        std::fs::create_dir_all(root.path().join("tmp")).map_err(|e| format!("tmp: {e}"))?;
        let tar = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(root.path())
            .args(["-cf", "-", "."])
            .output()
            .map_err(|e| format!("tar: {e}"))?;
        if !tar.status.success() {
            return Err(format!("tar: {}", String::from_utf8_lossy(&tar.stderr)));
        }
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(IMAGE_REPO.into()),
            tag: Some(tag.clone()),
            changes: vec![format!("ENTRYPOINT [\"{QUILLD}\"]"), "ENV RUST_BACKTRACE=1".into()],
            ..Default::default()
        };
        let body = testcontainers::bollard::body_full(tar.stdout.into());
        self.block(async {
            let mut s = std::pin::pin!(self.docker.create_image(Some(options), Some(body), None));
            while let Some(r) = s.next().await {
                r.map_err(|e| format!("importing {image}: {e}"))?;
            }
            Ok::<_, String>(())
        })?;
        self.block(self.docker.inspect_image(&image)).map_err(|e| format!("{image} after the import: {e}"))?;
        Ok(image)
    }

    /// A bridge network for cluster `name` on a /24 of 10.0.0.0/8 no other network holds.
    pub fn create_network(&self, name: &str) -> Result<Net, String> {
        let seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let mut last = String::new();
        for attempt in 0..32u64 {
            let x = seed.wrapping_add(attempt.wrapping_mul(0x2545_F491_4F6C_DD1D)) >> 16;
            let prefix = [10, 200 + (x % 50) as u8, ((x >> 8) % 256) as u8];
            let net = Net { name: format!("{name}-{}", x % 1_000_000), prefix };
            let [a, b, c] = prefix;
            let req = NetworkCreateRequest {
                name: net.name.clone(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("{a}.{b}.{c}.0/24")),
                        gateway: Some(format!("{a}.{b}.{c}.1")),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(HashMap::from([(LABEL.to_owned(), name.to_owned())])),
                ..Default::default()
            };
            match self.block(self.docker.create_network(req)) {
                Ok(_) => return Ok(net),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("no free /24 for network {name}: {last}"))
    }

    /// Remove network `net` (its containers first).
    pub fn remove_network(&self, net: &str) {
        let _ = self.block(self.docker.remove_network(net));
    }

    /// Create (if it does not exist) and start the node container `spec` on `net`.
    pub fn start_node(&self, image: &str, net: &Net, spec: &NodeSpec, cluster: &str) -> Result<(), String> {
        if self.block(self.docker.inspect_container(&spec.name, None)).is_err() {
            let binds = spec.dirs.iter().map(|d| format!("{0}:{0}:rw", d.display())).collect();
            let body = ContainerCreateBody {
                image: Some(image.to_owned()),
                cmd: Some(spec.args.clone()),
                env: Some(spec.env.clone()),
                labels: Some(HashMap::from([(LABEL.to_owned(), cluster.to_owned())])),
                host_config: Some(HostConfig {
                    binds: Some(binds),
                    network_mode: Some(net.name.clone()),
                    ..Default::default()
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(net.name.clone(), endpoint(spec.ip))])),
                }),
                ..Default::default()
            };
            let options = CreateContainerOptionsBuilder::new().name(&spec.name).build();
            self.block(self.docker.create_container(Some(options), body))
                .map_err(|e| format!("creating container {}: {e}", spec.name))?;
        }
        self.block(self.docker.start_container(&spec.name, None)).map_err(|e| format!("starting {}: {e}", spec.name))
    }

    /// Send `signal` (`SIGKILL`, `SIGTERM`, ...) to the container's main process.
    pub fn kill(&self, name: &str, signal: &str) -> Result<(), String> {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        self.block(self.docker.kill_container(name, Some(options))).map_err(|e| format!("{signal} to {name}: {e}"))
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it has stopped.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<(), String> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(10);
        let options = StopContainerOptionsBuilder::new().t(t).build();
        self.block(self.docker.stop_container(name, Some(options))).map_err(|e| format!("stopping {name}: {e}"))
    }

    /// Wait until the container is no longer running (after a kill).
    pub fn wait_stopped(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        while self.running(name)? {
            if std::time::Instant::now() > deadline {
                return Err(format!("{name} still runs after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Whether the container runs (paused counts as running).
    pub fn running(&self, name: &str) -> Result<bool, String> {
        let i = self.block(self.docker.inspect_container(name, None)).map_err(|e| format!("inspecting {name}: {e}"))?;
        Ok(i.state.and_then(|s| s.running).unwrap_or(false))
    }

    /// The host PID of the container's main process (for entering its network namespace).
    pub fn pid(&self, name: &str) -> Result<u32, String> {
        let i = self.block(self.docker.inspect_container(name, None)).map_err(|e| format!("inspecting {name}: {e}"))?;
        i.state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{name} has no process"))
    }

    /// Freeze every process of the container (cgroup freezer).
    pub fn pause(&self, name: &str) -> Result<(), String> {
        self.block(self.docker.pause_container(name)).map_err(|e| format!("pausing {name}: {e}"))
    }

    /// Thaw it.
    pub fn unpause(&self, name: &str) -> Result<(), String> {
        self.block(self.docker.unpause_container(name)).map_err(|e| format!("unpausing {name}: {e}"))
    }

    /// Take the container off `net` (it keeps running with no network).
    pub fn disconnect(&self, net: &Net, name: &str) -> Result<(), String> {
        let req = NetworkDisconnectRequest { container: name.to_owned(), force: Some(true) };
        self.block(self.docker.disconnect_network(&net.name, req)).map_err(|e| format!("disconnecting {name}: {e}"))
    }

    /// Put it back on `net` at its fixed address.
    pub fn reconnect(&self, net: &Net, name: &str, ip: Ipv4Addr) -> Result<(), String> {
        let req = NetworkConnectRequest { container: name.to_owned(), endpoint_config: Some(endpoint(ip)) };
        self.block(self.docker.connect_network(&net.name, req)).map_err(|e| format!("connecting {name}: {e}"))
    }

    /// Drop (or stop dropping) every packet the container sends to `to`: a blackhole route in its
    /// network namespace (`ip route add blackhole`), entered from the host with `nsenter`, so the
    /// image needs no tools. Both directions of a link need one on each side.
    pub fn blackhole(&self, name: &str, to: Ipv4Addr, on: bool) -> Result<(), String> {
        let pid = self.pid(name)?;
        let verb = if on { "add" } else { "del" };
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "ip", "route", verb, "blackhole", &format!("{to}/32")])
            .output()
            .map_err(|e| format!("nsenter: {e}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        // Adding a route already there, or removing one already gone, is no error here.
        if out.status.success() || err.contains("File exists") || err.contains("No such process") {
            Ok(())
        } else {
            Err(format!("ip route {verb} blackhole {to} in {name}: {err}"))
        }
    }

    /// The container's last `lines` lines of output (stdout and stderr).
    pub fn logs(&self, name: &str, lines: usize) -> String {
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&lines.to_string()).build();
        self.block(async {
            let mut out = String::new();
            let mut s = std::pin::pin!(self.docker.logs(name, Some(options)));
            while let Some(Ok(chunk)) = s.next().await {
                out.push_str(&chunk.to_string());
            }
            out
        })
    }

    /// Remove the container, running or not.
    pub fn remove(&self, name: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        let _ = self.block(self.docker.remove_container(name, Some(options)));
    }
}

fn endpoint(ip: Ipv4Addr) -> EndpointSettings {
    EndpointSettings {
        ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(ip.to_string()), ..Default::default() }),
        ..Default::default()
    }
}

/// The files of the node image: (path inside, path on the host): `quilld`, hsm-sim's module,
/// libfaketime (at the host's path, [`crate::FAKETIME_LIB`], when the host has it), and every
/// shared library and the loader `ldd` names for them, at the paths the loader looks for them.
fn image_files(bin_dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let quilld = bin_dir.join("quilld");
    let module = bin_dir.join("libquill_hsm_sim.so");
    let mut files = vec![(QUILLD.to_owned(), quilld.clone()), (SIM_MODULE.to_owned(), module.clone())];
    let faketime = PathBuf::from(crate::FAKETIME_LIB);
    if faketime.exists() {
        files.push((crate::FAKETIME_LIB.to_owned(), faketime.clone()));
    }
    let bins: Vec<PathBuf> = files.iter().map(|(_, host)| host.clone()).collect();
    for bin in &bins {
        let out = Command::new("ldd").arg(bin).output().map_err(|e| format!("ldd {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!("ldd {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr)));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)`, or the loader
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/'))
                && !files.iter().any(|(inside, _)| inside == p)
            {
                files.push((p.to_owned(), PathBuf::from(p)));
            }
        }
    }
    Ok(files)
}
