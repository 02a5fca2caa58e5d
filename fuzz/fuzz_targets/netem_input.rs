//! The emulator's decoders of user input (durations, rates, sizes, probabilities) and its link
//! model under arbitrary parameters and packet sequences: nothing may panic, and a packet is
//! never delivered before it was offered, nor (without reordering) before the one offered
//! ahead of it.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quicstrap_netem::units::{parse_duration, parse_probability, parse_rate, parse_size};
use quicstrap_netem::{Link, LinkParams, Loss, Verdict};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_duration(s);
        let _ = parse_rate(s);
        let _ = parse_size(s);
        let _ = parse_probability(s);
    }
    if data.len() < 12 {
        return;
    }
    let byte = |i: usize| data[i] as u64;
    let params = LinkParams {
        delay: Duration::from_micros(byte(0) * 1000),
        jitter: Duration::from_micros(byte(1) * 100),
        loss: match data[2] % 3 {
            0 => Loss::None,
            1 => Loss::Bernoulli(byte(3) as f64 / 255.0),
            _ => Loss::bursty(byte(3) as f64 / 256.0, 1.0 + byte(4) as f64).unwrap_or(Loss::None),
        },
        rate_bps: (data[5] != 0).then(|| byte(5) * 1_000_000),
        queue_bytes: (byte(6) as usize + 1) * 1500,
        reorder: if data[7] % 2 == 0 { 0.0 } else { byte(8) as f64 / 255.0 },
        reorder_delay: Duration::from_micros(byte(9) * 100),
        blackhole: data[10] % 17 == 0,
    };
    if params.validate().is_err() {
        return;
    }
    let mut link = Link::new(params, u64::from(data[11]));
    let t0 = Instant::now();
    let mut now = t0;
    let mut last: Option<Instant> = None;
    for chunk in data[12..].chunks(2) {
        now += Duration::from_micros(u64::from(chunk[0]) * 10);
        let len = 40 + chunk.get(1).map(|b| *b as usize * 6).unwrap_or(0);
        if let Verdict::Deliver(at) = link.offer(now, len) {
            assert!(at >= now, "delivered before it was offered");
            if params.reorder == 0.0 {
                if let Some(prev) = last {
                    assert!(at >= prev, "reordered without reordering");
                }
                last = Some(at);
            }
        }
    }
});
