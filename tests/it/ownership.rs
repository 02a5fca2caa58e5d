//! Restarts and ownership: one serving process per data dir and snapshot root, typed
//! refusals while shutting down, digest work that stops when nobody waits for it, and the
//! trust a server and a client give by default. Real processes, real sockets.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use quicstrap::net::tls::{self, AllowList};

/// Waits (bounded) for a child to exit; its status.
fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_dir_is_refused_and_the_first_transfer_completes() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(40, (60_000, 1000, 15_000));
    let first = ServeProcess::start(src.path(), &[]);
    let f = slow_fetcher(10_000_000, |_| {});
    let (task, progress) = spawn_fetch(&f, &id, vec![quicstrap::Peer::new(first.addr)], dst.path());
    wait_bytes(&progress, 8 << 20).await;

    // Same data dir, another port: refused with a clear error and exit 2, touching nothing.
    let mut second = serve_command_in(None, src.path(), "127.0.0.1:0");
    let out = second.stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("locked by another quicstrap process"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&first.pid().to_string()),
        "names the holder: {stderr}"
    );

    // Same snapshot root through another data dir: refused too.
    let other = tempfile::tempdir().unwrap();
    let mut third = serve_command_in(None, other.path(), "127.0.0.1:0");
    third
        .arg("--snapshot-dir")
        .arg(src.path().join(".snapshots"));
    let out = third.stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");

    let refused = Instant::now();
    let report = task
        .await
        .unwrap()
        .expect("the first server's transfer completes");
    assert_eq!(report.attempts.len(), 1, "{:?}", report.attempts);
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    chaos_outcome("second_serve_locked_out", true, refused.elapsed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_lock_takes_over_once_the_old_process_exits() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id) = seeded(41, (2_000, 100, 1_000));
    let mut old = ServeProcess::start(src.path(), &[]);
    // A rolling restart: the new process starts first and waits for the lock.
    let mut cmd = serve_command_in(None, src.path(), "127.0.0.1:0");
    cmd.args(["--wait-for-lock", "30"]).stderr(Stdio::inherit());
    let new = std::thread::spawn(move || ServeProcess::spawn(cmd));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!new.is_finished(), "the new process must wait, not start");
    old.signal(libc::SIGTERM);
    let stopped = Instant::now();
    let new = tokio::task::spawn_blocking(move || new.join().unwrap())
        .await
        .unwrap();
    let took_over = stopped.elapsed();
    assert!(wait_exit(&mut old.child, Duration::from_secs(10)).success());
    // It serves.
    let dst = tempfile::tempdir().unwrap();
    fetcher(|_| {})
        .fetch(&id, &[quicstrap::Peer::new(new.addr)], dst.path())
        .await
        .unwrap();
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    chaos_outcome("rolling_restart_waits_for_lock", true, took_over, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_keep_alive_clients_get_shutting_down_not_not_found() {
    let _turn = turn(Needs::Nothing).await;
    let dst = tempfile::tempdir().unwrap();
    // Many small files: the client asks for one after another on its keep-alive connection.
    let (src, id) = seeded(42, (40_000, 1000, 1_000));
    let quic = server(src.path(), |_| {}).await;
    let https = https_server(&quic, |_| {}).await;
    let addr = https.local_addr();
    let f = https_fetcher(|c| {
        c.policy.read_limiter = quicstrap::control::pacing::RateLimiter::new(8_000_000);
    });
    let progress = std::sync::Arc::new(quicstrap::client::Progress::default());
    let fetch = {
        let (dst, p) = (dst.path().to_owned(), progress.clone());
        tokio::spawn(async move { f.fetch(&id, &[quicstrap::Peer::new(addr)], &dst, &p).await })
    };
    wait_bytes(&progress, 4 << 20).await;
    https.shutdown().await;
    let err = fetch.await.unwrap().expect_err("the server went away");
    let attempts = err.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].outcome, "shutting_down", "{attempts:?}");
    assert!(temp_dirs(dst.path()).is_empty());
    quic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_certificate_does_not_pass_for_an_allowed_name() {
    let _turn = turn(Needs::Nothing).await;
    let (_src, id, quic) = served(44, (1_000, 100, 500), |c| {
        c.policy.live =
            quicstrap::server::LivePolicy::new(AllowList::parse("client.quicstrap.test"));
    })
    .await;
    // *.quicstrap.test from the same CA: valid for client.quicstrap.test as a hostname,
    // but not that node's identity.
    let dst = tempfile::tempdir().unwrap();
    let f = fetcher(|c| c.policy.identity = tls::dev::wildcard().unwrap());
    let err = f
        .fetch(&id, &[peer(&quic)], dst.path())
        .await
        .expect_err("a wildcard certificate must be refused");
    let attempts = err.attempts();
    assert!(attempts.iter().all(|a| a.outcome != "ok"), "{attempts:?}");
    assert_eq!(quic.stats().accepted.load(Ordering::Relaxed), 0);
    // The exact name passes.
    fetch_ok(&quic, &id).await;
    quic.shutdown().await;
}

/// `cmd` run without `flag` and its value: refused as a usage error (exit 2) that names the
/// flag, before anything starts.
fn refused_without(cmd: std::process::Command, flag: &str) {
    let mut kept = Vec::new();
    let mut args = cmd.get_args();
    while let Some(a) = args.next() {
        if a == flag {
            args.next();
        } else {
            kept.push(a.to_owned());
        }
    }
    let out = std::process::Command::new(cmd.get_program())
        .args(kept)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "without {flag}: {stderr}");
    assert!(stderr.contains(flag), "without {flag}: {stderr}");
}

#[test]
fn serve_and_fetch_trust_nothing_by_default() {
    let _turn = turn_blocking(Needs::Nothing);
    let root = tempfile::tempdir().unwrap();
    refused_without(serve_command_in(None, root.path(), "127.0.0.1:0"), "--ca");
    refused_without(
        serve_command_in(None, root.path(), "127.0.0.1:0"),
        "--allow",
    );
    let mut fetch = fetch_command(root.path(), "s", 1, 0);
    fetch.args(["--peer", "127.0.0.1:9"]);
    refused_without(fetch, "--ca");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_pins_which_server_certificates_the_client_accepts() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id) = seeded(45, (1_000, 100, 500));
    let serve = ServeProcess::start(src.path(), &[]);
    let peer = serve.addr.to_string();
    let fetch = |pin: &str| {
        let dst = tempfile::tempdir().unwrap();
        let out = fetch_command(dst.path(), &id.store, id.version, id.partition)
            .args(["--peer", &peer, "--server-name", pin, "--json"])
            .output()
            .unwrap();
        (out, dst)
    };
    // The server's certificate is not valid for this name: no transfer, nothing left.
    let (out, dst) = fetch("other.quicstrap.test");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["attempts"][0]["outcome"], "connect_failed",
        "{report}"
    );
    assert!(!id.dir(dst.path()).exists());
    // It is for this one.
    let (out, dst) = fetch("server.quicstrap.test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
}
