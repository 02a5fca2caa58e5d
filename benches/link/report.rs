//! The link benchmark's results: a cell of the matrix and its runs' medians, the Markdown
//! table, the JSON file and the SVG plot written under `--out`.

use std::collections::BTreeMap;
use std::io::Write;

use crate::fetch::{RelayHealth, Run};
use crate::Opts;

/// One cell of the matrix: a variant at one RTT and loss (or on loopback), and its runs.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Cell {
    pub(crate) section: String,
    pub(crate) rtt_ms: u64,
    pub(crate) loss: String,
    pub(crate) loss_rate: f64,
    pub(crate) capacity_mbs: f64,
    pub(crate) variant: String,
    pub(crate) checksum: String,
    pub(crate) runs: Vec<Run>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Cell {
    /// Runs that count: finished, or cut at the cap (failures are reported apart).
    fn counted(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|r| r.failed.is_none())
    }
    fn med(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.counted().map(f).collect())
    }
    fn failures(&self) -> usize {
        self.runs.iter().filter(|r| r.failed.is_some()).count()
    }
    fn spread(&self) -> (f64, f64) {
        let g: Vec<f64> = self.counted().map(|r| r.goodput_mbs).collect();
        (
            g.iter().copied().fold(f64::INFINITY, f64::min),
            g.iter().copied().fold(0.0, f64::max),
        )
    }
    pub(crate) fn all_completed(&self) -> bool {
        self.runs.iter().all(|r| r.completed)
    }
}

fn fmt_cell(c: &Cell) -> String {
    let (lo, hi) = c.spread();
    let failed = match c.failures() {
        0 => String::new(),
        n => format!(" ({n} failed)"),
    };
    format!(
        "{:.1}{} ({:.1}–{:.1}){failed}",
        c.med(|r| r.goodput_mbs),
        if c.all_completed() { "" } else { "*" },
        lo,
        hi
    )
}

/// Writes `link.md`, `link.json` and `link.svg` for the cells so far (after every row, so an
/// interrupted run keeps what it measured).
pub(crate) fn write_outputs(o: &Opts, cells: &[Cell], machine: &str, source_bytes: u64) {
    let mut md = String::new();
    let cmd: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    md.push_str(&format!(
        "Command: `cargo bench --bench link -- {}` (as root)\n\nMachine: {machine}\n\nSnapshot: {:.1} MB; link {} Mbit/s, MTU {}, one-BDP drop-tail queue; {} repetitions, variants alternating; cap {} s per run.\n\n",
        cmd.join(" "),
        source_bytes as f64 / 1e6,
        o.rate_mbit,
        o.mtu,
        o.reps,
        o.cap_secs,
    ));
    md.push_str("Goodput in MB/s (10⁶ B/s): median (min–max). `*`: at least one run did not finish within the cap; such a run counts with the bytes it had received by then over its time. Runs that failed otherwise are left out of the medians and counted as failed.\n\n");
    let by_key = |section: &str, rtt: u64, loss: &str, variant: &str, checksum: &str| {
        cells.iter().find(|c| {
            c.section == section
                && c.rtt_ms == rtt
                && c.loss == loss
                && c.variant == variant
                && c.checksum == checksum
        })
    };
    let link: Vec<&Cell> = cells.iter().filter(|c| c.section == "link").collect();
    if !link.is_empty() {
        md.push_str("| RTT | loss | capacity | ");
        for v in &o.variants {
            md.push_str(&format!("{v} | "));
        }
        md.push_str("QUIC-paced / capacity | QUIC-paced / tcp-cubic | QUIC-paced / best TCP |\n|");
        md.push_str(&"---|".repeat(3 + o.variants.len() + 3));
        md.push('\n');
        let mut rows: Vec<(u64, String)> = Vec::new();
        for c in &link {
            let k = (c.rtt_ms, c.loss.clone());
            if !rows.contains(&k) {
                rows.push(k);
            }
        }
        for (rtt, l) in &rows {
            let first = by_key("link", *rtt, l, &o.variants[0], "md5");
            let cap = first.map(|c| c.capacity_mbs).unwrap_or(f64::NAN);
            md.push_str(&format!("| {rtt} ms | {} | {cap:.1} | ", loss_label(l)));
            for v in &o.variants {
                md.push_str(
                    &by_key("link", *rtt, l, v, "md5")
                        .map(fmt_cell)
                        .unwrap_or_default(),
                );
                md.push_str(" | ");
            }
            let g = |v: &str| by_key("link", *rtt, l, v, "md5").map(|c| c.med(|r| r.goodput_mbs));
            let quic = g("quic-paced").unwrap_or(f64::NAN);
            let best_tcp = ["tcp-cubic", "tcp-bbr", "tcp-cubic-x4", "tcp-bbr-x4"]
                .iter()
                .filter_map(|v| g(v))
                .fold(f64::NAN, f64::max);
            // A ratio against a variant this run did not measure is "—", not NaN.
            let ratio = |r: f64, digits: usize| {
                if r.is_finite() {
                    format!("{r:.digits$}×")
                } else {
                    "—".to_string()
                }
            };
            md.push_str(&format!(
                "{:.0} % | {} | {} |\n",
                100.0 * quic / cap,
                ratio(quic / g("tcp-cubic").unwrap_or(f64::NAN), 1),
                ratio(quic / best_tcp, 2)
            ));
        }
        md.push_str("\nCPU seconds (client / server) and peak RSS MiB (client / server), medians per variant:\n\n| RTT | loss | ");
        for v in &o.variants {
            md.push_str(&format!("{v} | "));
        }
        md.push_str("\n|");
        md.push_str(&"---|".repeat(2 + o.variants.len()));
        md.push('\n');
        for (rtt, l) in &rows {
            md.push_str(&format!("| {rtt} ms | {} | ", loss_label(l)));
            for v in &o.variants {
                if let Some(c) = by_key("link", *rtt, l, v, "md5") {
                    md.push_str(&format!(
                        "{:.1}/{:.1} s, {:.0}/{:.0} MiB | ",
                        c.med(|r| r.client_cpu),
                        c.med(|r| r.server_cpu),
                        c.med(|r| r.client_rss_mib),
                        c.med(|r| r.server_rss_mib)
                    ));
                } else {
                    md.push_str(" | ");
                }
            }
            md.push('\n');
        }
        md.push_str(&sender_loss(o, &rows, &link));
        md.push_str(&relay_health(&link));
    }
    let lb: Vec<&Cell> = cells.iter().filter(|c| c.section == "loopback").collect();
    if !lb.is_empty() {
        md.push_str("\nClean loopback (no emulator), goodput MB/s median (min–max), CPU s client/server, client + server CPU-seconds per GB moved, peak RSS MiB client/server:\n\n| checksum | variant | goodput | CPU | CPU-s/GB | RSS |\n|---|---|---|---|---|---|\n");
        let gb = source_bytes as f64 / 1e9;
        for c in lb {
            md.push_str(&format!(
                "| {} | {} | {} | {:.2}/{:.2} | {:.2} | {:.0}/{:.0} |\n",
                c.checksum,
                c.variant,
                fmt_cell(c),
                c.med(|r| r.client_cpu),
                c.med(|r| r.server_cpu),
                c.med(|r| (r.client_cpu + r.server_cpu) / gb),
                c.med(|r| r.client_rss_mib),
                c.med(|r| r.server_rss_mib)
            ));
        }
    }
    let _ = std::fs::write(o.out.join("link.md"), &md);
    if let Ok(json) = serde_json::to_vec_pretty(cells) {
        let _ = std::fs::write(o.out.join("link.json"), json);
    }
    let _ = std::fs::write(o.out.join("link.svg"), plot(o, cells));
    let _ = std::io::stderr().flush();
}

/// The QUIC variants' own packet losses per cell (the server's sender, quinn's count), median
/// of the runs: the link's random loss plus what the sender's bursts overflowed.
fn sender_loss(o: &Opts, rows: &[(u64, String)], link: &[&Cell]) -> String {
    let quic: Vec<&String> = o
        .variants
        .iter()
        .filter(|v| v.starts_with("quic"))
        .collect();
    if quic.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nPackets the QUIC sender lost, % of those it sent (median; the link's own loss included):\n\n| RTT | loss | ",
    );
    for v in &quic {
        md.push_str(&format!("{v} | "));
    }
    md.push_str("\n|");
    md.push_str(&"---|".repeat(2 + quic.len()));
    md.push('\n');
    for (rtt, l) in rows {
        md.push_str(&format!("| {rtt} ms | {} | ", loss_label(l)));
        for v in &quic {
            let found = link.iter().find(|c| {
                c.rtt_ms == *rtt && &c.loss == l && &c.variant == *v && c.checksum == "md5"
            });
            let cell = found.map(|c| {
                let losses: Vec<f64> = c.runs.iter().filter_map(|r| r.sender_loss).collect();
                if losses.is_empty() {
                    "—".to_string()
                } else {
                    format!("{:.2} %", 100.0 * median(losses))
                }
            });
            md.push_str(&format!("{} | ", cell.unwrap_or_default()));
        }
        md.push('\n');
    }
    md
}

/// One paragraph on how the emulator kept up over the link runs: the worst mean lateness,
/// the kernel's drops, and which cells ran on a relay that fell behind (their numbers
/// describe the host as much as the protocols).
fn relay_health(link: &[&Cell]) -> String {
    let runs: Vec<(&Cell, RelayHealth)> = link
        .iter()
        .flat_map(|c| c.runs.iter().filter_map(move |r| r.relay.map(|h| (*c, h))))
        .collect();
    if runs.is_empty() {
        return String::new();
    }
    let worst = runs.iter().map(|(_, h)| h.late_us).fold(0.0, f64::max);
    let drops: u64 = runs.iter().map(|(_, h)| h.kernel_drops).sum();
    let mut behind: Vec<String> = Vec::new();
    for (c, h) in &runs {
        let name = format!("{} ms {} {}", c.rtt_ms, loss_label(&c.loss), c.variant);
        if !h.kept_up && !behind.contains(&name) {
            behind.push(name);
        }
    }
    let verdict = if behind.is_empty() {
        "every run kept to the link model".to_string()
    } else {
        format!("the relay fell behind in: {}", behind.join(", "))
    };
    format!(
        "\nEmulator (server → client, per run): worst mean lateness {worst:.0} µs (target < {:.0}), \
         kernel drops {drops}; {verdict}.\n",
        quicstrap_netem::DirStats::FAITHFUL_LATENESS.as_secs_f64() * 1e6
    )
}

fn loss_label(l: &str) -> String {
    match l.strip_prefix('b') {
        Some(p) => format!("{p} % bursty"),
        None => format!("{l} %"),
    }
}

/// Goodput against loss, one line per variant, one panel per RTT (plain SVG, no fonts to
/// find).
fn plot(o: &Opts, cells: &[Cell]) -> String {
    let colors: BTreeMap<&str, &str> = [
        ("quic-paced", "#e377c2"),
        ("quic-cubic", "#1f77b4"),
        ("quic-bbr", "#d62728"),
        ("tcp-cubic", "#2ca02c"),
        ("tcp-bbr", "#9467bd"),
        ("tcp-cubic-x4", "#ff7f0e"),
        ("tcp-bbr-x4", "#8c564b"),
    ]
    .into_iter()
    .collect();
    let (pw, ph, m) = (320.0, 240.0, 50.0);
    let width = m + o.rtts.len() as f64 * (pw + m);
    let height = ph + 2.0 * m + 30.0;
    let ymax = o.rate_mbit as f64 / 8.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    for (pi, rtt) in o.rtts.iter().enumerate() {
        let x0 = m + pi as f64 * (pw + m);
        let y0 = m;
        s.push_str(&format!(
            "<rect x='{x0}' y='{y0}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>\n<text x='{}' y='{}' text-anchor='middle' font-size='13'>RTT {rtt} ms</text>\n",
            x0 + pw / 2.0,
            y0 - 8.0
        ));
        for t in 0..=5 {
            let v = ymax * t as f64 / 5.0;
            let y = y0 + ph - ph * t as f64 / 5.0;
            s.push_str(&format!(
                "<line x1='{x0}' y1='{y}' x2='{}' y2='{y}' stroke='#eee'/><text x='{}' y='{}' text-anchor='end'>{v:.0}</text>\n",
                x0 + pw,
                x0 - 4.0,
                y + 4.0
            ));
        }
        let n = o.losses.len().max(2) as f64;
        let xat = |i: usize| x0 + 20.0 + (pw - 40.0) * i as f64 / (n - 1.0);
        for (i, l) in o.losses.iter().enumerate() {
            s.push_str(&format!(
                "<text x='{}' y='{}' text-anchor='middle'>{}</text>\n",
                xat(i),
                y0 + ph + 15.0,
                loss_label(l)
            ));
        }
        for v in &o.variants {
            let pts: Vec<String> = o
                .losses
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    cells
                        .iter()
                        .find(|c| {
                            c.section == "link"
                                && c.rtt_ms == *rtt
                                && &c.loss == l
                                && &c.variant == v
                        })
                        .map(|c| {
                            let g = c.med(|r| r.goodput_mbs).min(ymax);
                            format!("{:.1},{:.1}", xat(i), y0 + ph - ph * g / ymax)
                        })
                })
                .collect();
            let color = colors.get(v.as_str()).copied().unwrap_or("#000");
            s.push_str(&format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
                pts.join(" ")
            ));
        }
    }
    s.push_str(&format!(
        "<text x='12' y='{}' transform='rotate(-90 12 {})' text-anchor='middle'>goodput MB/s</text>\n",
        m + ph / 2.0,
        m + ph / 2.0
    ));
    for (i, v) in o.variants.iter().enumerate() {
        let x = m + i as f64 * 130.0;
        let y = height - 12.0;
        let color = colors.get(v.as_str()).copied().unwrap_or("#000");
        s.push_str(&format!(
            "<line x1='{x}' y1='{}' x2='{}' y2='{}' stroke='{color}' stroke-width='3'/><text x='{}' y='{y}'>{v}</text>\n",
            y - 4.0,
            x + 20.0,
            y - 4.0,
            x + 25.0
        ));
    }
    s.push_str("</svg>\n");
    s
}
