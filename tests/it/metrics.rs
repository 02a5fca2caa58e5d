//! `serve --metrics-listen`: Prometheus text with what an operator needs to see, live.

use std::process::Command;

use crate::common::*;

/// The metrics at `url`, which must answer (unlike `testkit::scrape`, for polls that may
/// come before the listener is up).
fn scrape(url: &str) -> String {
    let out = output_ok(Command::new("curl").args(["-sS", "--fail", url]));
    String::from_utf8(out.stdout).unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn metrics_count_transfers_bytes_and_snapshots() {
    let _turn = turn_blocking(Needs::Nothing);
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(90, (5_000, 200, 1_000));
    let mut serve = ServeProcess::start(
        src.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--adaptive-throttle",
            "--max-send-buffer",
            "67108864",
        ],
    );
    let url = serve.next_line("metrics on ");
    let before = scrape(&url);
    // Memory: the cap in force, nothing granted while idle, the process's RSS and its peak.
    assert_eq!(
        value(&before, "quicstrap_send_buffer_limit_bytes"),
        67108864.0
    );
    assert_eq!(value(&before, "quicstrap_send_buffer_bytes"), 0.0);
    let rss = value(&before, "quicstrap_process_resident_memory_bytes");
    let peak = value(&before, "quicstrap_process_peak_resident_memory_bytes");
    assert!(rss > 1e6 && peak >= rss, "rss {rss}, peak {peak}");
    assert_eq!(
        value(
            &before,
            "quicstrap_server_transfers_total{outcome=\"completed\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &before,
            "quicstrap_throttle_factor_percent{direction=\"write\"}"
        ),
        100.0
    );

    output_ok(
        fetch_command(dst.path(), &id.store, id.version, id.partition)
            .args(["--peer", &serve.addr.to_string()]),
    );

    // The server counts the transfer when the client's Done arrives: give it a moment.
    let completed = "quicstrap_server_transfers_total{outcome=\"completed\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut after = scrape(&url);
    while value(&after, completed) < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        after = scrape(&url);
    }
    assert_eq!(value(&after, completed), 1.0);
    assert_eq!(
        value(
            &after,
            "quicstrap_server_transfers_total{outcome=\"failed\"}"
        ),
        0.0
    );
    let sent = value(&after, "quicstrap_bytes_sent_total");
    let (_, on_disk) = quicstrap::store::partition::dir_summary(&id.dir(dst.path())).unwrap();
    assert!(
        sent > 0.0 && sent <= on_disk as f64,
        "sent {sent}, fetched {on_disk}"
    );
    assert_eq!(value(&after, "quicstrap_snapshots_created_total"), 1.0);
    assert_eq!(value(&after, "quicstrap_snapshot_users"), 0.0);
    // The finished transfer gave its share of the send budget back.
    assert_eq!(value(&after, "quicstrap_send_buffer_bytes"), 0.0);
    assert!(after.contains("# TYPE quicstrap_bytes_sent_total counter"));
}

#[test]
fn https_listeners_are_counted_apart_from_quic() {
    let _turn = turn_blocking(Needs::Nothing);
    let dst = tempfile::tempdir().unwrap();
    let (src, id) = seeded(91, (5_000, 200, 1_000));
    let mut serve = ServeProcess::start(
        src.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let https = serve.next_addr("https listening on ");
    let url = serve.next_line("metrics on ");
    let series = |outcome: &str| {
        format!("quicstrap_https_transfers_total{{listener=\"{https}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(value(&scrape(&url), &series("started")), 0.0);

    // A refused request (unknown partition), then a whole transfer.
    let missing = fetch_command(dst.path(), &id.store, id.version, id.partition + 1)
        .args(["--http", "--peer", &https.to_string()])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    output_ok(
        fetch_command(dst.path(), &id.store, id.version, id.partition).args([
            "--http",
            "--peer",
            &https.to_string(),
        ]),
    );
    let after = scrape(&url);
    assert_eq!(value(&after, &series("started")), 1.0);
    assert_eq!(value(&after, &series("completed")), 1.0);
    assert!(value(&after, &series("rejected")) >= 1.0, "{after}");
    let sent = value(
        &after,
        &format!("quicstrap_https_bytes_sent_total{{listener=\"{https}\"}}"),
    );
    let files = quicstrap::store::partition::dir_summary(&id.dir(dst.path())).unwrap();
    // Every file went out once (the metadata is not a file).
    assert!(
        sent > 0.0 && sent <= files.1 as f64,
        "sent {sent}, on disk {}",
        files.1
    );
    // The QUIC side saw none of it.
    assert_eq!(value(&after, "quicstrap_bytes_sent_total"), 0.0);

    // `--metrics-listen` on an HTTPS fetch is a clear error, not silently ignored.
    let dst2 = tempfile::tempdir().unwrap();
    let out = fetch_command(dst2.path(), &id.store, id.version, id.partition)
        .args(["--http", "--peer", &https.to_string()])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-listen"));
}
