//! The operator's commands: `config check` a file, `status` of a serving node, and `admin`
//! calls that change it without a restart (drain, a limit, a reload) — each one HTTP call to
//! the node's admin endpoint (`serve --admin-listen`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::CliError;

/// Where a node's admin endpoint listens unless told otherwise (`serve --admin-listen 7879`).
const DEFAULT_ADMIN: &str = "127.0.0.1:7879";

// `quicstrap config ...`.
#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub cmd: ConfigCmd,
}

/// What to do with a configuration file.
#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate FILE: TOML syntax, every key a flag of its command, every value accepted by
    /// its flag, every store section well-formed. Exit 0 when it is usable, 2 with the line
    /// of the first problem otherwise.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `quicstrap config check FILE` of the command line `command`.
pub fn config(a: ConfigArgs, command: &clap::Command) -> Result<(), CliError> {
    match a.cmd {
        ConfigCmd::Check { file } => {
            let said = crate::config::check(&file, command).map_err(CliError::Unusable)?;
            println!("{said}");
            Ok(())
        }
    }
}

// `quicstrap status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The node's admin endpoint (`serve --admin-listen`).
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// Print the node's JSON status (schema in docs/report.md) instead of a table.
    #[arg(long)]
    pub json: bool,
}

// `quicstrap admin`.
#[derive(Args)]
pub struct AdminArgs {
    /// The node's admin endpoint (`serve --admin-listen`).
    #[arg(long, default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    #[command(subcommand)]
    pub cmd: AdminCmd,
}

/// A change to a running node.
#[derive(Subcommand)]
pub enum AdminCmd {
    /// Refuse new transfers (`draining`), let the running ones finish.
    Drain {
        /// Wait until nothing holds a snapshot any more, then exit 0 (safe to stop).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 1).
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Set the write limit, bytes/s (0 = unlimited): the process's, or one store's.
    Limit {
        /// Bytes/s.
        #[arg(long)]
        write: u64,
        /// Only this store's transfers (on top of the process's limit).
        #[arg(long)]
        store: Option<String>,
    },
    /// Re-read the node's --config file and apply what can change live (as SIGHUP does).
    Reload,
}

/// `quicstrap status`: the node's transfers as a table, or its JSON.
pub async fn status(a: StatusArgs) -> Result<(), CliError> {
    let v = call(a.admin, "GET", "/status").await?;
    if a.json {
        println!("{v:#}");
    } else {
        print!("{}", table(&v));
    }
    Ok(())
}

/// `quicstrap admin ...`.
pub async fn admin(a: AdminArgs) -> Result<(), CliError> {
    match a.cmd {
        AdminCmd::Drain { wait, timeout_secs } => {
            let mut v = call(a.admin, "POST", "/drain").await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
            while wait && v["drained"] != true {
                if tokio::time::Instant::now() >= deadline {
                    return Err(CliError::Failed(format!(
                        "still {} transfers after {timeout_secs} s",
                        v["snapshot_users"]
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                v = call(a.admin, "GET", "/status").await?;
            }
            let users = &v["snapshot_users"];
            if v["drained"] == true {
                println!("drained: no transfer runs, new ones are refused");
            } else {
                println!("draining: {users} transfers still running, new ones are refused");
            }
            Ok(())
        }
        AdminCmd::Limit { write, store } => {
            let path = match &store {
                Some(s) => format!("/limit?write={write}&store={s}"),
                None => format!("/limit?write={write}"),
            };
            let v = call(a.admin, "POST", &path).await?;
            match store {
                Some(s) => println!("store {s}: write limit {write} B/s"),
                None => println!(
                    "write limit {} B/s (in force now: {} B/s)",
                    v["write_limit"], v["write_rate_now"]
                ),
            }
            Ok(())
        }
        AdminCmd::Reload => {
            let v = call(a.admin, "POST", "/reload").await?;
            println!("{v:#}");
            Ok(())
        }
    }
}

/// One call to the admin endpoint; its JSON answer, or the error it states.
async fn call(addr: SocketAddr, method: &str, path: &str) -> Result<serde_json::Value, CliError> {
    let unreachable = |e: std::io::Error| CliError::Failed(format!("admin endpoint {addr}: {e}"));
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(unreachable)?;
        let admin = quicstrap::jobs::admin::ADMIN_HEADER;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{admin}: 1\r\nconnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.map_err(unreachable)?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.map_err(unreachable)?;
        Ok::<_, CliError>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| CliError::Failed(format!("admin endpoint {addr}: no answer in 10 s")))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        let status = head.lines().next().unwrap_or_default();
        CliError::Failed(format!("admin endpoint {addr}: {status}: {e}"))
    })?;
    if v["ok"] == false {
        return Err(CliError::Failed(format!(
            "admin endpoint {addr}: {}",
            v["error"].as_str().unwrap_or("refused")
        )));
    }
    Ok(v)
}

/// Bytes as a person reads them.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut n = n;
    let mut unit = 0;
    while n >= 1000.0 && unit < UNITS.len() - 1 {
        n /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} {}", UNITS[unit])
    } else {
        format!("{n:.1} {}", UNITS[unit])
    }
}

/// The status as a table: the node on one line, then one row per transfer.
fn table(v: &serde_json::Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let limit = |r: f64| {
        if r == 0.0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", bytes(r))
        }
    };
    let state = if v["drained"] == true {
        "drained"
    } else if v["draining"] == true {
        "draining"
    } else {
        "serving"
    };
    let mut out = format!(
        "node: {state} · {} transfers · write limit {} (now {})\n",
        v["snapshot_users"],
        limit(f("write_limit")),
        limit(f("write_rate_now")),
    );
    if let Some(stores) = v["stores"].as_object() {
        for (name, s) in stores {
            let served = if s["serve"] == true {
                "served"
            } else {
                "NOT served"
            };
            let wl = s["write_limit"].as_f64().map_or("-".to_owned(), limit);
            out += &format!("store {name}: {served}, write limit {wl}\n");
        }
    }
    let rows = v["transfers"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        out += "no transfers running\n";
        return out;
    }
    out += &format!(
        "{:<28} {:<22} {:<26} {:>21} {:>11} {:>7}\n",
        "PARTITION", "PEER", "CLIENT", "SENT / TOTAL", "RATE", "ETA"
    );
    for t in rows {
        let partition = format!(
            "{}_v{}/{}{}",
            t["store"].as_str().unwrap_or("?"),
            t["version"],
            t["partition"],
            if t["resume"] == true { " (resume)" } else { "" }
        );
        let sent = t["bytes_sent"].as_f64().unwrap_or(0.0);
        let total = t["bytes_total"].as_f64().unwrap_or(0.0);
        let eta = t["eta_secs"]
            .as_f64()
            .map_or("-".to_owned(), |s| format!("{s:.0} s"));
        out += &format!(
            "{:<28} {:<22} {:<26} {:>21} {:>11} {:>7}\n",
            partition,
            t["peer"].as_str().unwrap_or("?"),
            t["client"].as_str().unwrap_or("?"),
            format!("{} / {}", bytes(sent), bytes(total)),
            format!(
                "{}/s",
                bytes(t["rate_bytes_per_sec"].as_f64().unwrap_or(0.0))
            ),
            eta,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_transfer_and_the_node() {
        let v = serde_json::json!({
            "schema": 1, "kind": "status", "ok": true, "draining": true, "drained": false,
            "snapshot_users": 1, "write_limit": 50_000_000, "write_rate_now": 50_000_000,
            "stores": {"orders": {"serve": false, "write_limit": null}},
            "transfers": [{
                "store": "orders", "version": 1, "partition": 3, "peer": "10.0.0.2:4433",
                "client": "node-b.example", "resume": false, "bytes_sent": 12_000_000,
                "bytes_total": 48_000_000, "elapsed_secs": 4.0,
                "rate_bytes_per_sec": 3_000_000.0, "eta_secs": 12.0
            }]
        });
        let t = table(&v);
        assert!(
            t.starts_with("node: draining · 1 transfers · write limit 50.0 MB/s"),
            "{t}"
        );
        assert!(t.contains("store orders: NOT served"), "{t}");
        let row = t.lines().last().unwrap();
        for part in [
            "orders_v1/3",
            "10.0.0.2:4433",
            "node-b.example",
            "12.0 MB / 48.0 MB",
            "3.0 MB/s",
            "12 s",
        ] {
            assert!(row.contains(part), "{part} missing from {row:?}");
        }
    }
}
