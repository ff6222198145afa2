//! Quill nodes as containers on the machine's Docker engine (issue 15), with hsm-sim tokens.
//!
//! - The engine smoke test: exactly the calls the container harness stands on, so that a change
//!   of engine shows up here first: the node image imported from a staged root (bollard), a
//!   container of it started by `testcontainers` on a named network, its bridge address read,
//!   pause/unpause, exec, SIGKILL and network disconnect/connect through the re-exported bollard
//!   client, stop.
//! - A 3-node cluster in containers prepares a batch while its leader is SIGKILLed and restarted,
//!   a follower is frozen, a follower is taken off the network and put back, its wall clock is
//!   moved 10 minutes ahead and back (libfaketime from the node image; seen in its Status
//!   answer and called out by `quill cluster status`, the others' clocks untouched), and the leader is cut off from the others by
//!   blackhole routes (3,000 cards in chunks of 50): every card once, every node converged.
//!
//! Where no Docker engine answers, each test prints one line saying why and passes.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use quill_node::tls::{Identity, PkiDir};
use quill_tests::containers::{Engine, IMAGE_REPO};
use quill_tests::{Cluster, ClusterOptions, bin_dir, http_get, step, wait_until, write_dda_batch};
use testcontainers::core::{ExecCommand, Mount, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{GenericImage, ImageExt as _};

/// `/health` of the node at `addr` answers 200 within `within`.
async fn healthy(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let probe = tokio::task::spawn_blocking(move || http_get(addr, "/health")).await.unwrap();
        if let Ok((200, _)) = probe {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A one-node config listening on every address of its container (the smoke test does not know
/// the address before the container starts), with its TLS files, under `dir`.
fn single_node_config(dir: &Path) -> std::path::PathBuf {
    let pki = PkiDir::init(&dir.join("pki")).unwrap();
    let tls = dir.join("tls");
    pki.issue(&Identity::Node(1), &["127.0.0.1".into()], Default::default(), &tls).unwrap();
    let config = dir.join("node.toml");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        &config,
        format!(
            "node_id = 1\nraft_addr = \"0.0.0.0:7100\"\napi_addr = \"0.0.0.0:7101\"\nhttp_addr = \"0.0.0.0:7102\"\n\
             data_dir = \"{}\"\n\n[tls]\ncert = \"{1}/cert.pem\"\nkey = \"{1}/key.pem\"\npeer_ca = \"{1}/ca.pem\"\n\
             client_ca = \"{1}/client-ca.pem\"\n",
            dir.join("data").display(),
            tls.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_smoke_image_network_pause_exec_kill_disconnect() {
    let Some(engine) = Engine::or_skip("engine_smoke") else { return };
    step("import the node image from a staged root (a rerun finds it by its hash)");
    let image = engine.node_image(&bin_dir()).unwrap();
    let tag = image.strip_prefix(&format!("{IMAGE_REPO}:")).unwrap().to_owned();
    assert_eq!(engine.node_image(&bin_dir()).unwrap(), image, "the same files give the same image");
    let net = engine.create_network("quill-smoke").unwrap();

    step("start a node container with testcontainers on the named network");
    let dir = tempfile::tempdir().unwrap();
    let config = single_node_config(dir.path());
    let d = dir.path().display().to_string();
    let container = GenericImage::new(IMAGE_REPO, tag.as_str())
        .with_wait_for(WaitFor::Nothing)
        .with_cmd(["--config", config.to_str().unwrap()])
        .with_mount(Mount::bind_mount(d.clone(), d))
        .with_network(net.name.clone())
        .start()
        .await
        .unwrap();
    let name = container.id().to_owned();
    let ip = container.get_bridge_ip_address().await.unwrap();
    let http = SocketAddr::new(ip, 7102);
    step(&format!("container {} at {ip}", &name[..12]));
    assert!(healthy(http, Duration::from_secs(30)).await, "/health at {http}: {}", engine.logs(&name, 30));

    step("pause: /health goes quiet; unpause: it answers");
    container.pause().await.unwrap();
    assert!(!healthy(http, Duration::from_secs(1)).await, "a paused node answered");
    container.unpause().await.unwrap();
    assert!(healthy(http, Duration::from_secs(10)).await);

    step("exec in the container: the image's quilld");
    let mut exec = container.exec(ExecCommand::new(["/usr/local/bin/quilld", "--version"])).await.unwrap();
    let out = String::from_utf8(exec.stdout_to_vec().await.unwrap()).unwrap();
    assert!(out.starts_with("quilld "), "{out:?}");

    step("network disconnect: unreachable but running; connect: back");
    engine.disconnect(&net, &name).unwrap();
    assert!(!healthy(http, Duration::from_secs(1)).await, "reachable off the network");
    assert!(container.is_running().await.unwrap());
    let std::net::IpAddr::V4(v4) = ip else { panic!("an IPv4 bridge address: {ip}") };
    engine.reconnect(&net, &name, v4).unwrap();
    assert!(healthy(http, Duration::from_secs(10)).await, "{}", engine.logs(&name, 30));

    step("SIGKILL through bollard; start again; stop");
    engine.kill(&name, "SIGKILL").unwrap();
    engine.wait_stopped(&name, Duration::from_secs(10)).unwrap();
    assert!(!container.is_running().await.unwrap());
    assert_eq!(container.exit_code().await.unwrap(), Some(137), "killed by SIGKILL");
    container.start().await.unwrap();
    let ip2 = container.get_bridge_ip_address().await.unwrap();
    assert!(healthy(SocketAddr::new(ip2, 7102), Duration::from_secs(30)).await, "{}", engine.logs(&name, 30));
    container.stop().await.unwrap();
    assert!(!container.is_running().await.unwrap());
    container.rm().await.unwrap();
    engine.remove_network(&net.name);
}
/// Wait until at least `n` chunks of `job` are done.
async fn chunks_done(cluster: &Cluster, node: u64, job: &str, n: u64) {
    wait_until(Duration::from_secs(180), &format!("{n} chunks done"), || async {
        let j = cluster.query(node, "job", job).await?;
        let done = j["chunks_done"].as_u64().unwrap_or(0);
        if done >= n { Ok(()) } else { Err(format!("{done} chunks done")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_in_a_containerised_cluster_survives_kill_pause_disconnect_and_partition() {
    if Engine::or_skip("containerised cluster").is_none() {
        return;
    }
    let opts = ClusterOptions { nodes: 3, hsm: true, containers: true, clock_skew: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t110", opts).await;
    cluster.keys_ready().await;
    let ids = cluster.ids();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cards.csv");
    let cards = 3000;
    write_dda_batch(&input, cards, 0);
    let job = cluster.submit_dda_job(1, &input, "50");

    step("SIGKILL the leader's container, start it again");
    chunks_done(&cluster, 1, &job, 2).await;
    let leader = cluster.wait_leader(&ids, Duration::from_secs(20), "a leader").await;
    cluster.kill(leader);
    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let next = cluster.wait_leader(&others, Duration::from_secs(30), "a new leader").await;
    cluster.restart(leader).await;

    step(&format!("freeze follower {leader} (cgroup freezer) for 3 s"));
    chunks_done(&cluster, next, &job, 10).await;
    cluster.pause(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.resume(leader);

    step("take a follower off the network, put it back");
    let follower = *others.iter().find(|i| **i != next).unwrap();
    cluster.disconnect(follower);
    chunks_done(&cluster, next, &job, 20).await;
    cluster.reconnect(follower);

    step("move the follower's wall clock 10 minutes ahead (libfaketime in its container), then back");
    let offset_is = |id: u64, want: i64| {
        let cluster = &cluster;
        move || async move {
            let seen = cluster.clock_offset(id).await?;
            if (seen - want).abs() <= 1 { Ok(()) } else { Err(format!("node {id}'s clock is {seen:+} s off")) }
        }
    };
    cluster.skew_clock(follower, 600);
    wait_until(Duration::from_secs(10), "the skew in the follower's Status", offset_is(follower, 600)).await;
    wait_until(Duration::from_secs(5), "the other nodes on the host's clock", offset_is(next, 0)).await;
    let status = cluster.quill_ok(next, &["cluster", "status"], &[]);
    let said = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("CLOCK: node {follower}'s clock is ")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok());
    assert!(said.is_some_and(|s| (s - 600.0).abs() < 1.0), "{status}");
    assert_eq!(status.matches("CLOCK:").count(), 1, "only the follower's clock is off: {status}");
    chunks_done(&cluster, next, &job, 25).await;
    cluster.skew_clock(follower, 0);
    wait_until(Duration::from_secs(10), "the follower's clock back", offset_is(follower, 0)).await;

    step("cut the leader off from the others (blackhole routes both ways), heal");
    let leader = cluster.wait_leader(&ids, Duration::from_secs(30), "a leader").await;
    // The leader may lose its term before it answers (a linearizable read needs one): ask again.
    let j = wait_until(Duration::from_secs(30), "the job's progress", || cluster.query(leader, "job", &job)).await;
    step(&format!("(the batch is at {}/{cards} cards)", j["cards_done"]));
    cluster.partition(&[leader]);
    let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let (new_leader, _) = cluster.wait_leader_after(&rest, 0, Duration::from_secs(30), "a majority leader").await;
    assert_ne!(new_leader, leader);
    cluster.heal();

    step("the batch completes, every card once; every node converges");
    let j = cluster.wait_job_done(new_leader, &job).await;
    assert_eq!(j["cards_done"], cards as u64);
    cluster.check_output(follower, &job, &input, dir.path(), cards).unwrap();
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;
}
