//! Partition honesty: with the blackhole on, echoes stop; with it off, they resume.

mod common;

use std::time::Duration;

use common::{ping, start, supported, Echo, Wait};
use quicstrap_netem::{Dir, LinkParams, Loss};

#[test]
fn blackhole_stops_and_resumes_traffic() {
    if !supported("blackhole_stops_and_resumes_traffic") {
        return;
    }
    let rtt = Duration::from_millis(20);
    let params = LinkParams::symmetric_rtt(rtt, Some(100_000_000), Loss::None);
    let emu = start("qsn-bh", [81, 0], params, 1);
    let echo = Echo::start(&emu, 7300, Wait::Block);
    // Generous for a slow host: a ping returns as soon as every echo is back, so only the
    // blackholed one waits it out.
    let grace = Duration::from_secs(2);
    let interval = Duration::from_millis(5);

    let before = ping(&emu, &echo, 20, interval, grace, Wait::Block);
    assert_eq!(before.len(), 20, "link not clean before the blackhole");

    emu.set_blackhole(true);
    assert!(emu.params(Dir::AtoB).blackhole && emu.params(Dir::BtoA).blackhole);
    // Other parameters are untouched by the switch.
    assert_eq!(emu.params(Dir::AtoB).delay, rtt / 2);
    let during = ping(&emu, &echo, 20, interval, grace, Wait::Block);
    let (ab, _) = emu.stats();
    println!(
        "blackhole on: {} of 20 echoes, {} dropped A->B",
        during.len(),
        ab.dropped_blackhole
    );
    assert!(
        during.is_empty(),
        "{} echoes crossed a blackhole",
        during.len()
    );
    assert_eq!(ab.dropped_blackhole, 20);

    emu.set_blackhole(false);
    let after = ping(&emu, &echo, 20, interval, grace, Wait::Block);
    println!("blackhole off: {} of 20 echoes", after.len());
    assert_eq!(after.len(), 20, "traffic did not resume");
    drop(echo);
    emu.stop().unwrap();
}
