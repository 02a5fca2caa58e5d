//! Network namespaces: creating and deleting them with `ip netns`, running code inside one
//! (on a dedicated thread that `setns()`es into it), and finding leftovers.
//!
//! Only the calling thread enters a namespace, never the process, so the relay and the
//! caller's other threads stay in the root namespace while sockets and TUN devices made on
//! the helper thread stay bound to the namespace they were created in.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::NetemError;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Finds the `ip` binary: `PATH` first, then the usual sbin directories, because root's
/// `PATH` under some launchers lacks `/usr/sbin`.
fn ip_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("ip");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let candidate = Path::new(dir).join("ip");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("ip")
}

/// Runs `ip <args>` and returns its stdout, or an error carrying its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<String, NetemError> {
    let cmd_line = format!("ip {}", args.join(" "));
    let out = Command::new(ip_binary())
        .args(args)
        .output()
        .map_err(|e| NetemError::io(format!("running `{cmd_line}`"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetemError::Command {
            cmd: cmd_line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Path of a named namespace's handle, which `setns()` needs.
pub(crate) fn ns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether a named namespace exists.
pub(crate) fn ns_exists(name: &str) -> bool {
    ns_path(name).exists()
}

/// Creates a named namespace.
pub(crate) fn ns_add(name: &str) -> Result<(), NetemError> {
    ip(&["netns", "add", name]).map(|_| ())
}

/// Deletes a named namespace (its devices go when nothing holds it any more).
pub(crate) fn ns_del(name: &str) -> Result<(), NetemError> {
    ip(&["netns", "del", name]).map(|_| ())
}

/// Names of all named namespaces, read from [`NETNS_DIR`] (empty if it does not exist).
pub(crate) fn ns_list() -> Result<Vec<String>, NetemError> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetemError::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| NetemError::io(format!("listing {NETNS_DIR}"), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Moves the calling thread (only) into the named network namespace.
fn enter(ns: &str) -> Result<(), NetemError> {
    let path = ns_path(ns);
    let file =
        File::open(&path).map_err(|e| NetemError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: plain syscall on a valid fd; it affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetemError::last_os(format!("setns into {ns}")));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside the network namespace `ns` and returns its result.
///
/// This is how a test or benchmark makes a socket that lives in a namespace without
/// spawning a process: sockets (and TUN devices) stay bound to the namespace they were
/// created in, and can be used from any thread afterwards. The caller's own thread never
/// changes namespace. A panic in `f` is propagated to the caller.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetemError> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn_scoped(s, move || -> Result<T, NetemError> {
                enter(ns)?;
                Ok(f())
            })
            .map_err(|e| NetemError::io("spawning a namespace thread", e))?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Sets a `net.*` sysctl inside namespace `ns` (e.g. `net.ipv4.tcp_wmem` to
/// `"4096 16384 33554432"`), because a fresh namespace starts from the kernel defaults,
/// whose 4 MiB TCP send-buffer limit caps one flow well below 200 Mbit/s at a 150 ms RTT.
/// Only `net.*` keys are accepted, since other sysctls are not per-namespace and would
/// change the whole machine (and a few `net.*` ones are global on older kernels).
pub fn set_sysctl(ns: &str, key: &str, value: &str) -> Result<(), NetemError> {
    let path = sysctl_path(key)?;
    // /proc/sys/net resolves in the namespace of the thread that opens it.
    in_netns(ns, || std::fs::write(&path, value))?
        .map_err(|e| NetemError::io(format!("writing {value:?} to {path} in {ns}"), e))
}

/// Reads a `net.*` sysctl inside namespace `ns`, to check what a namespace runs with.
pub fn get_sysctl(ns: &str, key: &str) -> Result<String, NetemError> {
    let path = sysctl_path(key)?;
    in_netns(ns, || std::fs::read_to_string(&path))?
        .map(|s| s.trim().to_owned())
        .map_err(|e| NetemError::io(format!("reading {path} in {ns}"), e))
}

/// Maps `net.ipv4.tcp_wmem` to its /proc path, refusing anything outside `net.*`.
fn sysctl_path(key: &str) -> Result<String, NetemError> {
    let ok = key.starts_with("net.")
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !ok {
        return Err(NetemError::InvalidConfig(format!(
            "sysctl key {key:?} is not a net.* key"
        )));
    }
    Ok(format!("/proc/sys/{}", key.replace('.', "/")))
}

/// Deletes leftover namespaces whose name starts with `<prefix>-` (the emulator names its
/// namespaces `<prefix>-a` and `<prefix>-b`), e.g. after a crashed run, and returns how
/// many it deleted. An empty prefix is refused rather than deleting everything.
pub fn cleanup(prefix: &str) -> Result<usize, NetemError> {
    crate::emulator::check_prefix(prefix)?;
    let start = format!("{prefix}-");
    let mut deleted = 0;
    for name in ns_list()? {
        if name.starts_with(&start) {
            ns_del(&name)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Checks that this process can run the emulator: root, `/dev/net/tun` can be opened, and
/// `ip netns` works. `Err` says what is missing, so tests can skip with a clear message.
pub fn is_supported() -> Result<(), String> {
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root (namespaces and TUN devices need root)".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        return Err(format!("cannot open /dev/net/tun: {e}"));
    }
    if let Err(e) = ip(&["netns", "list"]) {
        return Err(format!("`ip netns` unavailable: {e}"));
    }
    Ok(())
}
