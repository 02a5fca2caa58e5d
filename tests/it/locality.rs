//! Peer choice by locality over real sockets: the node's own zone is asked first and a dead
//! or busy near peer falls back to a far one (and the report says so), SRV priority and
//! weight are honoured with the random order on, the cross-zone read limit holds while a
//! local transfer runs free, and bytes are counted per zone class in the JSON report, the
//! attempts and the metrics.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::dns::{free_udp_port, Dnsmasq, DOMAIN};
use quicstrap::peers::dns::{srv_name, DnsSrv};
use quicstrap::peers::order::{PeerOrder, ZoneClass};
use quicstrap::peers::{Discovery, Peer};

/// A fetcher in zone `near` with the default (locality) order.
fn near_fetcher(
    tweak: impl FnOnce(&mut quicstrap::client::FetchConfig),
) -> Arc<quicstrap::Fetcher> {
    Arc::new(fetcher(|c| {
        c.order = PeerOrder::Locality;
        c.policy.zone = Some("near".into());
        tweak(c);
    }))
}

/// (peer, zone, outcome) of each attempt.
fn attempts_of(attempts: &[quicstrap::client::Attempt]) -> Vec<(String, ZoneClass, String)> {
    attempts
        .iter()
        .map(|a| (a.peer.clone(), a.zone, a.outcome.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_peer_is_asked_first_and_its_bytes_count_as_local() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, near) = served(120, (3_000, 200, 1_000), |_| {}).await;
    let far = server(src.path(), |_| {}).await;
    let f = near_fetcher(|_| {});
    // Listed far first: the order puts the near one first every time.
    let peers = vec![peer(&far).in_zone("far"), peer(&near).in_zone("near")];
    let mut bytes = 0;
    for _ in 0..5 {
        let dst = tempfile::tempdir().unwrap();
        let report = f.fetch(&id, &peers, dst.path()).await.unwrap();
        assert_eq!(
            attempts_of(&report.attempts),
            [(peer(&near).to_string(), ZoneClass::Local, "ok".into())]
        );
        bytes += report.bytes;
    }
    let stats = f.stats();
    assert_eq!(stats.bytes_local.load(Ordering::Relaxed), bytes);
    assert_eq!(stats.bytes_remote.load(Ordering::Relaxed), 0);
    // The metrics say the same, per zone class.
    let registry = quicstrap::metrics::Registry::new();
    quicstrap::metrics::register_client(&registry, &f, None);
    let text = registry.render();
    let series = |zone: &str| {
        testkit::metric(
            &text,
            &format!("quicstrap_bytes_received_by_zone_total{{zone=\"{zone}\"}}"),
        )
    };
    assert_eq!(series("local"), Some(bytes as f64), "{text}");
    assert_eq!(series("remote"), Some(0.0), "{text}");
    near.shutdown().await;
    far.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_busy_near_peer_falls_back_to_a_far_one_and_says_so() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, far) = served(121, (3_000, 200, 1_000), |_| {}).await;
    let busy = server(src.path(), |c| c.snapshots.max_users = 0).await;
    // Nothing listens there: the connectivity check finds it dead.
    let dead = Peer::new(SocketAddr::from(([127, 0, 0, 1], free_udp_port())));
    let f = near_fetcher(|c| c.policy.connect_timeout = Duration::from_secs(1));
    for (near, outcome) in [
        (dead.in_zone("near"), "connect_timeout"),
        (peer(&busy).in_zone("near"), "busy"),
    ] {
        let dst = tempfile::tempdir().unwrap();
        let peers = vec![peer(&far).in_zone("far"), near.clone()];
        let report = f.fetch(&id, &peers, dst.path()).await.unwrap();
        assert_eq!(
            attempts_of(&report.attempts),
            [
                (near.to_string(), ZoneClass::Local, outcome.into()),
                (peer(&far).to_string(), ZoneClass::Remote, "ok".into()),
            ]
        );
        assert_eq!(report.attempts[1].bytes, report.bytes);
        assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    }
    let stats = f.stats();
    assert_eq!(stats.bytes_local.load(Ordering::Relaxed), 0);
    assert!(stats.bytes_remote.load(Ordering::Relaxed) > 0);
    far.shutdown().await;
    busy.shutdown().await;
}

/// Records naming `ports` (port, priority, weight), every target on the dev server name.
fn srv_records(
    dir: &std::path::Path,
    id: &quicstrap::PartitionId,
    ports: &[(u16, u16, u16)],
) -> std::path::PathBuf {
    let name = srv_name(id, DOMAIN);
    let mut text = format!("local=/{DOMAIN}/\nhost-record=server.quicstrap.test,127.0.0.1\n");
    for (port, priority, weight) in ports {
        text.push_str(&format!(
            "srv-host={},server.quicstrap.test,{port},{priority},{weight}\n",
            name.trim_end_matches('.')
        ));
    }
    let path = dir.join("weights.conf");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_priority_and_weight_are_honoured_with_the_random_order_on() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, heavy) = served(122, (1_000, 100, 500), |_| {}).await;
    // Each server its own copy: servers of one process sharing a database refuse each
    // other's snapshots (RocksDB's lock), and the one that opened it first would serve all.
    let (light_src, backup_src) = (copy_of(src.path(), &id), copy_of(src.path(), &id));
    let light = server(light_src.path(), |_| {}).await;
    let backup = server(backup_src.path(), |_| {}).await;
    let port = |s: &quicstrap::server::Server| peer(s).addr.port();
    let conf = tempfile::tempdir().unwrap();
    let records = srv_records(
        conf.path(),
        &id,
        &[
            (port(&backup), 1, 50),
            (port(&light), 0, 10),
            (port(&heavy), 0, 90),
        ],
    );
    let dns = Dnsmasq::start_on(free_udp_port(), &records, 60).unwrap();
    let discovery = DnsSrv::new(&[dns.addr], DOMAIN, Duration::from_secs(1));
    let found = discovery.peers(&id).await.unwrap();
    let rank = |p: &Peer| (p.addr.port(), p.priority, p.weight);
    let mut ranks: Vec<_> = found.iter().map(rank).collect();
    ranks.sort();
    let mut want = vec![
        (port(&heavy), 0, 90),
        (port(&light), 0, 10),
        (port(&backup), 1, 50),
    ];
    want.sort();
    assert_eq!(
        ranks, want,
        "the records' priority and weight reach the peers"
    );
    let f = Arc::new(fetcher(|c| c.order = PeerOrder::Locality));
    let mut first = std::collections::HashMap::<u16, u32>::new();
    let mut tried = Vec::new();
    const N: u32 = 30;
    for _ in 0..N {
        let dst = tempfile::tempdir().unwrap();
        let report = f.fetch(&id, &found, dst.path()).await.unwrap();
        tried.push(format!("{:?}", report.attempts));
        let p: SocketAddr = report
            .peer
            .rsplit_once('@')
            .map_or(report.peer.as_str(), |(_, a)| a)
            .parse()
            .unwrap();
        *first.entry(p.port()).or_default() += 1;
    }
    // The lower tier always serves; within it, weight 90 against 10 (the chance that the
    // heavy one comes first fewer than 20 times in 30 is below 1e-5).
    assert_eq!(first.get(&port(&backup)), None, "{first:?}");
    assert!(
        first.get(&port(&heavy)).copied().unwrap_or(0) >= 20,
        "{first:?} heavy {} {:?}",
        port(&heavy),
        &tried[..2]
    );
    for s in [heavy, light, backup] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_limit_holds_while_a_local_transfer_runs_free() {
    // It measures rates over 10 s: no other test's CPU use may distort them.
    let _turn = turn(Needs::Process).await;
    const REMOTE: u64 = 3_000_000;
    // ≈ 41 MB: at 3 MB/s still running after 12 s.
    let (src, far_id, far) = served(123, (40_000, 1000, 5_000), |_| {}).await;
    let near_id = id(124);
    seed(src.path(), &near_id, 20_000, 1000, 5_000);
    let near = server(src.path(), |_| {}).await;
    // The process-wide limit is far above the remote one: only the remote one binds.
    let f = near_fetcher(|c| {
        c.policy.read_limiter = quicstrap::control::pacing::RateLimiter::new(200_000_000);
        c.policy.remote_read_limiter = quicstrap::control::pacing::RateLimiter::new(REMOTE);
    });
    let dst = tempfile::tempdir().unwrap();
    let (remote_run, progress) =
        spawn_fetch(&f, &far_id, vec![peer(&far).in_zone("far")], dst.path());
    // The pacing test's method: past the start, 10 s of received bytes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let before = progress.received.load(Ordering::Relaxed);
    // Meanwhile a local transfer pays only the process-wide limit.
    let local = f
        .fetch(&near_id, &[peer(&near).in_zone("near")], dst.path())
        .await
        .unwrap();
    let local_rate = local.bytes as f64 / local.seconds;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(t0.elapsed())).await;
    let rate =
        (progress.received.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    eprintln!(
        "remote limit {REMOTE} B/s: remote {rate:.0} B/s ({:+.1} %), local {local_rate:.0} B/s",
        100.0 * (rate - REMOTE as f64) / REMOTE as f64
    );
    assert!(
        (rate - REMOTE as f64).abs() <= 0.1 * REMOTE as f64,
        "remote transfer at {rate:.0} B/s, not within 10 % of its limit {REMOTE}"
    );
    // Loose on purpose (any host moves loopback bytes at several times 3 MB/s): it only
    // catches a local transfer held to the remote limit.
    assert!(
        local_rate > 2.0 * REMOTE as f64,
        "the local transfer ran at {local_rate:.0} B/s, as if it paid the remote limit"
    );
    let report = remote_run.await.unwrap().unwrap();
    assert_eq!(report.attempts[0].zone, ZoneClass::Remote);
    let stats = f.stats();
    assert_eq!(stats.bytes_local.load(Ordering::Relaxed), local.bytes);
    assert_eq!(stats.bytes_remote.load(Ordering::Relaxed), report.bytes);
    assert_same(&far_id.dir(src.path()), &far_id.dir(dst.path()));
    far.shutdown().await;
    near.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_names_each_attempts_zone_class() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id, far) = served(125, (3_000, 200, 1_000), |_| {}).await;
    let busy = server(src.path(), |c| c.snapshots.max_users = 0).await;
    let dst = tempfile::tempdir().unwrap();
    let mut cmd = testkit::fetch_command(dst.path(), &id.store, id.version, id.partition);
    cmd.args(["--json", "--zone", "dc1", "--remote-read-limit", "50000000"])
        .args(["--peer", &format!("dc2/{}", peer(&far))])
        .args(["--peer", &format!("dc1/{}", peer(&busy))]);
    let child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let (code, r) = tokio::task::spawn_blocking(move || report(child))
        .await
        .unwrap();
    assert_eq!(code, 0, "{r}");
    let attempts = r["attempts"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| (a["zone"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("local", "busy"), ("remote", "ok")], "{r}");
    assert!(attempts[1]["bytes"].as_u64().unwrap() > 0, "{r}");
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    far.shutdown().await;
    busy.shutdown().await;
}

/// On a star of emulated links (one near peer, one far over 60 ms and 1 % loss), `fetch
/// --zone` takes the near peer; with the near link cut it falls back to the far one.
#[test]
fn on_a_star_the_near_peer_serves_and_a_cut_near_link_falls_back() {
    use quicstrap_netem::{LinkParams, Loss, Spoke, Star, StarConfig};
    let _turn = turn_blocking(Needs::Process);
    if let Err(why) = quicstrap_netem::is_supported() {
        println!("SKIPPED star: {why}");
        return;
    }
    let _ = quicstrap_netem::cleanup("qsloc");
    let link = |rtt_ms, loss| {
        Spoke::symmetric(LinkParams::symmetric_rtt(
            Duration::from_millis(rtt_ms),
            Some(200_000_000),
            loss,
        ))
    };
    let star = Star::start(StarConfig::new(
        "qsloc",
        92,
        vec![link(2, Loss::None), link(60, Loss::Bernoulli(0.01))],
    ))
    .unwrap();
    let (near_src, id) = seeded(126, (3_000, 200, 1_000));
    let (far_src, _) = seeded(126, (3_000, 200, 1_000));
    let serve = |i: usize, root: &std::path::Path| {
        let listen = format!("{}:7000", star.addr_peer(i));
        let mut cmd = testkit::serve_command_in(Some(star.ns_peer(i)), root, &listen);
        cmd.stderr(std::process::Stdio::null());
        let mut s = testkit::ServeProcess::spawn(cmd);
        s.drain_stdout();
        s
    };
    let _near = serve(0, near_src.path());
    let _far = serve(1, far_src.path());
    let peers = [
        format!("dc2/localhost@{}:7000", star.addr_peer(1)),
        format!("dc1/localhost@{}:7000", star.addr_peer(0)),
    ];
    let fetch = || {
        let dst = tempfile::tempdir().unwrap();
        let mut cmd = testkit::fetch_command_in(
            Some(star.ns_hub()),
            dst.path(),
            &id.store,
            id.version,
            id.partition,
        );
        cmd.args(["--json", "--zone", "dc1", "--connect-timeout-secs", "2"]);
        for p in &peers {
            cmd.args(["--peer", p]);
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (code, r) = report(child);
        assert_eq!(code, 0, "{r}");
        assert_same(&id.dir(near_src.path()), &id.dir(dst.path()));
        r["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{}:{}",
                    a["zone"].as_str().unwrap(),
                    a["outcome"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(fetch(), ["local:ok"]);
    star.set_blackhole(0, true);
    assert_eq!(fetch(), ["local:connect_timeout", "remote:ok"]);
    star.check().unwrap();
}
