//! The command line as a user drives it: seed, serve, fetch --json, exit codes.

use std::process::Command;

use crate::common::*;

fn fetch_cmd(data: &std::path::Path, peers: &[String]) -> Command {
    let mut cmd = fetch_command(data, "cli_store", 2, 1);
    cmd.args(["--json", "--no-shuffle", "--connect-timeout-secs", "2"]);
    for p in peers {
        cmd.args(["--peer", p]);
    }
    cmd
}

#[test]
fn seed_serve_and_fetch_with_a_json_report() {
    let _turn = turn_blocking(Needs::Nothing);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let out = output_ok(
        Command::new(bin())
            .args([
                "seed",
                "--store",
                "cli_store",
                "--version",
                "2",
                "--partition",
                "1",
            ])
            .args([
                "--records",
                "5000",
                "--value-size",
                "200",
                "--records-per-sst",
                "1000",
            ])
            .arg("--data-dir")
            .arg(src.path()),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5000 records"));

    let server = ServeProcess::start(src.path(), &[]);
    let out = output_ok(&mut fetch_cmd(dst.path(), &[server.addr.to_string()]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The documented envelope (docs/report.md): a success says so too.
    assert_eq!(report["schema"], 1);
    assert_eq!(report["kind"], "fetch");
    assert_eq!(report["ok"], true);
    assert_eq!(report["peer"], server.addr.to_string());
    assert_eq!(report["attempts"][0]["outcome"], "ok");
    assert!(report["bytes"].as_u64().unwrap() > 1_000_000);
    assert!(report["files"].as_u64().unwrap() >= 5);
    assert_eq!(report["meta"]["offset"], 4999);
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    let dir = dst.path().join("cli_store_v2").join("1");
    assert_same(&src.path().join("cli_store_v2").join("1"), &dir);

    // Fetching again: the partition exists, exit code non-zero, one line on stderr.
    let out = fetch_cmd(dst.path(), &[server.addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn all_peers_failing_exits_non_zero_with_one_line() {
    let _turn = turn_blocking(Needs::Nothing);
    let empty = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(empty.path(), &[]);
    let out = fetch_cmd(dst.path(), &[server.addr.to_string(), "127.0.0.1:9".into()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("all 2 peers failed"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fallback"], "KafkaFromStart");
    assert_eq!(report["attempts"][0]["outcome"], "not_found");
    assert!(!dst.path().join("cli_store_v2").join("1").exists());
}

#[test]
fn bad_input_is_a_clear_error() {
    let _turn = turn_blocking(Needs::Nothing);
    let dst = tempfile::tempdir().unwrap();
    let out = fetch_command(dst.path(), "../etc", 1, 0)
        .args(["--peer", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store name"));
    assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 0);
}

#[test]
fn the_demo_runs_on_embedded_defaults() {
    let _turn = turn_blocking(Needs::Nothing);
    let out = output_ok(Command::new(bin()).args(["demo", "--json"]));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["verified_keys"], 262_144);
    assert!(s["seed"]["bytes"].as_u64().unwrap() > 256_000_000);
    assert_eq!(s["peers"].as_array().unwrap().len(), 3);
    let attempts = s["report"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.last().unwrap()["outcome"], "ok");
    for a in &attempts[..attempts.len() - 1] {
        let o = a["outcome"].as_str().unwrap();
        assert!(o == "busy" || o == "format_mismatch", "{o}");
    }
    assert_eq!(s["catch_up"]["records"], 10_000);
}

#[test]
fn config_check_accepts_the_example_and_points_at_a_bad_line() {
    let _turn = turn_blocking(Needs::Nothing);
    let example = testkit::workspace_root().join("examples/fleet.toml");
    let out = output_ok(Command::new(bin()).args(["config", "check"]).arg(&example));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(": ok (") && said.contains("stores orders, profiles, sessions"),
        "{said}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let cases = [
        (
            "[serve]\nallow = \"*\"\n\nmax-user = 3\n",
            "bad.toml:4: [serve] max-user: unknown key",
        ),
        (
            "[fetch]\n\n\nmin-rate = \"fast\"\n",
            "bad.toml:4: [fetch] min-rate:",
        ),
        (
            "[serve]\nallow = \"*\"\n[stores.x]\nserve = \"no\"\n",
            "bad.toml:3: [stores.x]",
        ),
        ("[serve\n", "bad.toml:1:"),
    ];
    for (text, expected) in cases {
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{text:?}: {err}");
        // The same file refuses to start a command, with the same line.
        let out = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected));
    }
}
