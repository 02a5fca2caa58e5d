//! Operating a fleet: a node configured by file, changed without a restart (SIGHUP, the admin
//! endpoint), watched with `quicstrap status`, drained; per-store policy; the dashboard's
//! series. Real `quicstrap serve` processes, real fetches.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicstrap::store::partition::PartitionId;
use testkit::DEV_ALLOW;

use crate::common::*;

/// `quicstrap serve` configured by the file at `path`, plus its listen address and identity.
fn serve_with_config(path: &Path) -> ServeProcess {
    let c = testkit::certs();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(path)
        .arg("--cert")
        .arg(c.join("server.crt"))
        .arg("--key")
        .arg(c.join("server.key"))
        .arg("--ca")
        .arg(c.join("ca.crt"))
        .stderr(Stdio::inherit());
    ServeProcess::spawn(cmd)
}

/// The admin address a serve process announces next.
fn admin_of(serve: &mut ServeProcess) -> String {
    let admin = serve.next_line("admin on http://");
    admin.trim_end_matches("/status").to_owned()
}

/// A `serve` configured only by `toml` (written to `dir/node.toml`); returns it and its
/// admin address.
fn serve_from_file(dir: &Path, toml: &str) -> (ServeProcess, String) {
    let path = dir.join("node.toml");
    std::fs::write(&path, toml).unwrap();
    let mut serve = serve_with_config(&path);
    let admin = admin_of(&mut serve);
    serve.drain_stdout();
    (serve, admin)
}

/// The `[serve]` section every test starts from.
fn serve_section(data: &Path, extra: &str) -> String {
    format!(
        "[serve]\ndata-dir = {:?}\nadmin-listen = \"127.0.0.1:0\"\n{extra}\n",
        data.display().to_string()
    )
}

/// `quicstrap status --json` of the node at `admin`.
fn status(admin: &str) -> serde_json::Value {
    let out = output_ok(Command::new(bin()).args(["status", "--json", "--admin", admin]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes the node's only running transfer has sent (0 when none runs).
fn sent(admin: &str) -> u64 {
    status(admin)["transfers"][0]["bytes_sent"]
        .as_u64()
        .unwrap_or(0)
}

/// A background `fetch --json` of `id` from `peers`.
fn spawn_fetch_json(dst: &Path, id: &PartitionId, peers: &[String]) -> Child {
    let mut cmd = fetch_command(dst, &id.store, id.version, id.partition);
    cmd.args(["--json", "--no-shuffle"]);
    for p in peers {
        cmd.args(["--peer", p]);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` (killed after `limit`) and returns its exit code and JSON report.
fn finish(mut child: Child, limit: Duration) -> (i32, serde_json::Value) {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Waits until the node at `admin` runs a transfer that has sent something.
fn wait_running(admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent(admin) == 0 {
        assert!(
            Instant::now() < deadline,
            "no transfer started: {:#}",
            status(admin)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rate of the running transfer over `window`, bytes/s, read from the node's own view.
fn rate_over(admin: &str, window: Duration) -> f64 {
    let (t0, b0) = (Instant::now(), sent(admin));
    std::thread::sleep(window);
    let b1 = sent(admin);
    (b1.saturating_sub(b0)) as f64 / t0.elapsed().as_secs_f64()
}

#[test]
fn sighup_lowers_a_live_write_limit_and_revokes_a_client_mid_transfer() {
    // It measures rates over seconds: no other test's CPU use may distort them.
    let _turn = turn_blocking(Needs::Process);
    let (src, id) = seeded(150, (60_000, 1000, 5_000));
    let conf = tempfile::tempdir().unwrap();
    let section = |limit: u64, allow: &str| {
        serve_section(
            src.path(),
            &format!("write-limit = {limit}\nallow = [\"{allow}\"]"),
        )
    };
    const FIRST: u64 = 8_000_000;
    const LOWER: u64 = 2_000_000;
    let (serve, admin) = serve_from_file(conf.path(), &section(FIRST, "client.quicstrap.test"));
    let dst = tempfile::tempdir().unwrap();
    let fetch = spawn_fetch_json(dst.path(), &id, &[serve.addr.to_string()]);
    wait_running(&admin);
    let before = rate_over(&admin, Duration::from_secs(2));

    // A lower limit in the file, applied by SIGHUP: in force within 2 s.
    std::fs::write(
        conf.path().join("node.toml"),
        section(LOWER, "client.quicstrap.test"),
    )
    .unwrap();
    serve.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    let after = rate_over(&admin, Duration::from_secs(3));
    eprintln!("write limit {FIRST} → {LOWER} B/s: {before:.0} → {after:.0} B/s");
    assert_eq!(status(&admin)["write_limit"], LOWER);
    assert!(
        before <= 1.1 * FIRST as f64,
        "{before:.0} B/s over the first limit"
    );
    assert!(
        after <= 1.1 * LOWER as f64,
        "{after:.0} B/s 2 s after the reload, over the new limit {LOWER}"
    );
    assert!(
        after >= 0.25 * LOWER as f64,
        "{after:.0} B/s: the transfer nearly stopped"
    );

    // The client taken off the allow list: its transfer ends, typed, mid-way.
    std::fs::write(
        conf.path().join("node.toml"),
        section(LOWER, "someone-else.example"),
    )
    .unwrap();
    serve.signal(libc::SIGHUP);
    let (code, v) = finish(fetch, Duration::from_secs(30));
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["attempts"][0]["outcome"], "revoked", "{v:#}");
    assert!(
        v["attempts"][0]["bytes"].as_u64().unwrap() > 0,
        "it ended mid-transfer: {v:#}"
    );
    // Nothing half-written is left as the partition.
    assert!(!id.dir(dst.path()).exists());
    // Its next connection is refused at the handshake, for its certificate.
    let (code, v) = finish(
        spawn_fetch_json(dst.path(), &id, &[serve.addr.to_string()]),
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["attempts"][0]["outcome"], "connect_failed", "{v:#}");
    let error = v["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("invalid peer certificate"), "{v:#}");
    assert_eq!(status(&admin)["transfers"].as_array().unwrap().len(), 0);
}

#[test]
fn a_disabled_store_is_refused_with_a_reason_and_the_fetcher_moves_on() {
    let _turn = turn_blocking(Needs::Nothing);
    let (src, id) = seeded(151, (5_000, 200, 1_000));
    let conf = tempfile::tempdir().unwrap();
    let allow = format!("allow = \"{DEV_ALLOW}\"\nmetrics-listen = \"127.0.0.1:0\"");
    let off = format!(
        "{}\n[stores.{}]\nserve = false\n",
        serve_section(src.path(), &allow),
        id.store
    );
    let path = conf.path().join("node.toml");
    std::fs::write(&path, &off).unwrap();
    let mut a = serve_with_config(&path);
    let metrics = a.next_line("metrics on ");
    let admin = admin_of(&mut a);
    a.drain_stdout();
    let other = copy_of(src.path(), &id);
    let b = ServeProcess::start(other.path(), &[]);

    let dst = tempfile::tempdir().unwrap();
    let peers = [a.addr.to_string(), b.addr.to_string()];
    let (code, v) = finish(
        spawn_fetch_json(dst.path(), &id, &peers),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        (&v["schema"], &v["kind"], &v["ok"]),
        (&1.into(), &"fetch".into(), &true.into())
    );
    assert_eq!(v["attempts"][0]["outcome"], "disabled", "{v:#}");
    assert_eq!(v["attempts"][1]["outcome"], "ok", "{v:#}");
    assert_eq!(v["peer"], b.addr.to_string());
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    let series = format!(
        "quicstrap_store_transfers_total{{store=\"{}\",role=\"serve\",outcome=\"refused\"}}",
        id.store
    );
    assert_eq!(metric(&scrape(&metrics), &series), Some(1.0));
    assert_eq!(status(&admin)["stores"][&id.store]["serve"], false);

    // Turned back on in the file and reloaded through the admin endpoint: A serves it.
    std::fs::write(&path, off.replace("serve = false", "serve = true")).unwrap();
    let out = output_ok(Command::new(bin()).args(["admin", "--admin", &admin, "reload"]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["applied"],
        serde_json::json!([format!("stores.{}", id.store)]),
        "{r:#}"
    );
    let again = tempfile::tempdir().unwrap();
    let (code, v) = finish(
        spawn_fetch_json(again.path(), &id, &[a.addr.to_string()]),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["peer"], a.addr.to_string());
    // A file that does not parse changes nothing, and says where it is wrong.
    std::fs::write(&path, format!("{off}\nwrite-limt = 5\n")).unwrap();
    let out = Command::new(bin())
        .args(["admin", "--admin", &admin, "reload"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown") && err.contains("stores"), "{err}");
    assert_eq!(status(&admin)["stores"][&id.store]["serve"], true);
}

#[test]
fn status_shows_a_running_transfer_and_drain_finishes_it_and_refuses_new_ones() {
    let _turn = turn_blocking(Needs::Nothing);
    let (src, id) = seeded(152, (12_000, 1000, 3_000));
    let small = id_of(&id, 153);
    seed(src.path(), &small, 1_000, 100, 500);
    let conf = tempfile::tempdir().unwrap();
    // ≈ 12 MB at 1.5 MB/s: about eight seconds to look at it and drain.
    let extra = format!("allow = \"{DEV_ALLOW}\"\nwrite-limit = 1500000");
    let (_serve, admin) = serve_from_file(conf.path(), &serve_section(src.path(), &extra));
    let addr = status_peer(&_serve);
    let dst = tempfile::tempdir().unwrap();
    let running = spawn_fetch_json(dst.path(), &id, std::slice::from_ref(&addr));
    wait_running(&admin);

    let out = output_ok(Command::new(bin()).args(["status", "--admin", &admin]));
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{}_v{}/{}", id.store, id.version, id.partition)))
        .unwrap_or_else(|| panic!("no row for the transfer:\n{table}"));
    assert!(row.contains("client.quicstrap.test"), "{row}");
    assert!(row.contains("B / ") && row.contains("B/s"), "{row}");
    assert!(table.starts_with("node: serving · 1 transfers"), "{table}");

    // What a web page could send (no admin header; an Origin) is refused and changes nothing.
    let code = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(extra)
            .arg(format!("http://{admin}/drain"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code(&[]), "403");
    assert_eq!(
        code(&[
            "-H",
            "x-quicstrap-admin: 1",
            "-H",
            "Origin: http://evil.example"
        ]),
        "403"
    );
    assert_eq!(status(&admin)["draining"], false);

    let out = output_ok(Command::new(bin()).args(["admin", "--admin", &admin, "drain"]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("draining: 1 transfers"));
    // A new request is refused, typed; the running one goes on.
    let (code, v) = finish(
        spawn_fetch_json(dst.path(), &small, std::slice::from_ref(&addr)),
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["attempts"][0]["outcome"], "draining", "{v:#}");
    let out = output_ok(Command::new(bin()).args([
        "admin",
        "--admin",
        &admin,
        "drain",
        "--wait",
        "--timeout-secs",
        "120",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("drained"));
    let (code, v) = finish(running, Duration::from_secs(60));
    assert_eq!(code, 0, "{v:#}");
    assert_same(&id.dir(src.path()), &id.dir(dst.path()));
    let s = status(&admin);
    assert_eq!(
        (&s["draining"], &s["drained"]),
        (&true.into(), &true.into())
    );
}

/// The QUIC address of a serve process, as a peer argument.
fn status_peer(s: &ServeProcess) -> String {
    s.addr.to_string()
}

/// Partition `p` of `id`'s store version.
fn id_of(id: &PartitionId, p: u32) -> PartitionId {
    PartitionId::new(&id.store, id.version, p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_uses_exists() {
    let _turn = turn(Needs::Nothing).await;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(testkit::workspace_root().join("docs/grafana/quicstrap.json"))
            .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    let mut used: Vec<String> = Vec::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("quicstrap_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.push(name);
        }
    }
    used.sort();
    used.dedup();
    assert!(used.len() >= 15, "{used:?}");

    // Everything a serving node and a fetching one export, after a transfer and a refusal.
    let (src, id) = seeded(154, (2_000, 200, 500));
    let server = server(src.path(), |_| {}).await;
    let _ = fetch_ok(&server, &id).await;
    let r = quicstrap::metrics::Registry::new();
    quicstrap::metrics::register_server(&r, &server, None);
    server.store_metrics().register(&r);
    let f = Arc::new(fetcher(|_| {}));
    quicstrap::metrics::register_client(&r, &f, None);
    quicstrap::metrics::StoreMetrics::fetching(&Default::default()).register(&r);
    quicstrap::metrics::register_process(&r);
    let ingest = Arc::new(quicstrap::ingest::IngestStats::default());
    quicstrap::metrics::register_ingest(&r, &[(id.to_string(), ingest)]);
    let text = r.render();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses series no node exports: {missing:?}"
    );
    assert!(text.contains("quicstrap_store_transfers_total{store=\"other\",role=\"serve\",outcome=\"completed\"} 1"), "{text}");
    server.shutdown().await;
}
