//! Teardown honesty: after `stop`, after a plain drop, and after a failed start, no
//! namespace and no TUN device is left behind, and a failed start never removes
//! namespaces it did not create.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use common::{netns_list, start, supported};
use quicstrap_netem::{
    cleanup, in_netns, Emulator, EmulatorConfig, LinkParams, NetemError, NETNS_DIR, TUN_NAME,
};

/// The fd checks look at the whole process, so these tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// TUN fds this process holds.
fn open_tun_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|target| target.as_os_str() == "/dev/net/tun")
        .count()
}

/// Whether interface `name` exists in the namespace behind `ns` (a handle opened while
/// the namespace still had a name).
fn has_interface(ns: &File, name: &str) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let cname = std::ffi::CString::new(name).unwrap();
            // SAFETY: valid NUL-terminated name.
            unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
        })
        .join()
        .unwrap()
    })
}

fn check_gone(emu_names: &[String], handles: &[File]) {
    let listed = netns_list();
    for name in emu_names {
        assert!(!listed.contains(name), "{name} still listed: {listed:?}");
        assert!(!std::path::Path::new(NETNS_DIR).join(name).exists());
    }
    for h in handles {
        assert!(!has_interface(h, TUN_NAME), "TUN device still exists");
        assert!(has_interface(h, "lo"), "sanity: lo must be visible");
    }
    assert_eq!(open_tun_fds(), 0, "TUN fds still open");
}

fn started(prefix: &str, subnet: [u8; 2]) -> (Emulator, Vec<String>, Vec<File>) {
    let emu = start(prefix, subnet, LinkParams::ideal(), 1);
    let names = vec![emu.ns_a().to_owned(), emu.ns_b().to_owned()];
    let listed = netns_list();
    let handles: Vec<File> = names
        .iter()
        .map(|n| {
            assert!(listed.contains(n), "{n} not in {listed:?}");
            File::open(std::path::Path::new(NETNS_DIR).join(n)).unwrap()
        })
        .collect();
    for h in &handles {
        assert!(has_interface(h, TUN_NAME));
    }
    assert_eq!(open_tun_fds(), 2);
    (emu, names, handles)
}

#[test]
fn stop_removes_everything() {
    if !supported("stop_removes_everything") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (emu, names, handles) = started("qsn-td1", [82, 1]);
    // A socket created in a namespace does not keep its name alive either.
    let sock = in_netns(emu.ns_b(), || std::net::UdpSocket::bind((emu.addr_b(), 0)))
        .unwrap()
        .unwrap();
    emu.stop().unwrap();
    check_gone(&names, &handles);
    drop(sock);
}

#[test]
fn drop_removes_everything() {
    if !supported("drop_removes_everything") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (emu, names, handles) = started("qsn-td2", [82, 2]);
    drop(emu);
    check_gone(&names, &handles);
}

#[test]
fn failed_start_removes_only_what_it_created() {
    if !supported("failed_start_removes_only_what_it_created") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Someone else's emulator is running with this prefix: a second start must fail and
    // leave the first one working.
    let (first, names, _handles) = started("qsn-td3", [82, 3]);
    let err = Emulator::start(EmulatorConfig::symmetric(
        "qsn-td3",
        [82, 4],
        LinkParams::ideal(),
    ))
    .unwrap_err();
    assert!(matches!(err, NetemError::NamespaceExists(_)), "{err}");
    let listed = netns_list();
    assert!(names.iter().all(|n| listed.contains(n)));
    assert_eq!(open_tun_fds(), 2);
    first.stop().unwrap();

    // Only B exists beforehand: start creates A, fails on B, and must delete A but not B.
    cleanup("qsn-td5").unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "add", "qsn-td5-b"])
        .status()
        .unwrap();
    assert!(out.success());
    let err = Emulator::start(EmulatorConfig::symmetric(
        "qsn-td5",
        [82, 5],
        LinkParams::ideal(),
    ))
    .unwrap_err();
    assert!(
        matches!(err, NetemError::NamespaceExists(ref n) if n == "qsn-td5-b"),
        "{err}"
    );
    let listed = netns_list();
    assert!(!listed.contains(&"qsn-td5-a".to_owned()), "{listed:?}");
    assert!(listed.contains(&"qsn-td5-b".to_owned()), "{listed:?}");
    assert_eq!(cleanup("qsn-td5").unwrap(), 1);
    assert_eq!(open_tun_fds(), 0);

    // Invalid parameters fail before anything is created.
    let bad = LinkParams {
        reorder: 2.0,
        ..LinkParams::ideal()
    };
    let err = Emulator::start(EmulatorConfig::symmetric("qsn-td6", [82, 6], bad)).unwrap_err();
    assert!(matches!(err, NetemError::InvalidConfig(_)), "{err}");
    assert!(!netns_list().iter().any(|n| n.starts_with("qsn-td6-")));
}

#[test]
fn cleanup_refuses_an_empty_prefix() {
    assert!(matches!(cleanup(""), Err(NetemError::InvalidConfig(_))));
}
