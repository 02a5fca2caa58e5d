//! A disk too small for the partition, or filled up by another writer while it arrives: the
//! fetch fails with `insufficient_space` — before the first byte when the manifest says so —
//! leaves what was on the disk as it was, calls for no Kafka rebuild onto the same disk, and
//! resumes once space is freed. Each test mounts its own small tmpfs (the tests run as root,
//! as `.ci/run` does).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use quicstrap::client::{AttemptError, Fallback, FetchError, Progress};

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs: these tests run as root");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Every file under `dir` with its content, to show a directory was left as it was.
fn snapshot_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn attempt_error(e: &FetchError) -> &AttemptError {
    match e {
        FetchError::GaveUp { error, .. } => error,
        other => panic!("expected a fetch that gave up, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_too_big_for_the_disk_fails_before_the_first_byte() {
    let _turn = turn(Needs::Nothing).await;
    // ~40 MB, on a 64 MiB disk: it fits, but not with the headroom a partition needs.
    let (src, id) = seeded(70, (40_000, 1_000, 5_000));
    let disk = SmallDisk::new(64);
    // What the node already has on that disk.
    let other = id_other();
    seed(disk.path(), &other, 1_000, 100, 500);
    let before = snapshot_of(disk.path());
    let s = server(src.path(), |_| {}).await;
    let f = fetcher(|_| {});
    let started = std::time::Instant::now();
    let err = f.fetch(&id, &[peer(&s)], disk.path()).await.unwrap_err();
    let failed_in = started.elapsed();
    let e = attempt_error(&err);
    assert_eq!(e.label(), "insufficient_space", "{err}");
    assert_eq!(
        err.fallback(),
        Fallback::None,
        "no Kafka rebuild onto a full disk"
    );
    assert_eq!(err.attempts().len(), 1, "no other peer helps a full disk");
    assert_eq!(err.attempts()[0].bytes, 0, "failed before the first byte");
    assert_eq!(snapshot_of(disk.path()), before, "the disk is as it was");
    // For CHAOS.md: the time to the typed failure; nothing on the disk changed.
    chaos_outcome("disk_too_small", true, failed_in, 0);
    s.shutdown().await;
}

fn id_other() -> quicstrap::PartitionId {
    quicstrap::PartitionId::new("it_other", 1, 0).unwrap()
}

/// Free bytes on the filesystem of `dir`.
fn free(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_mid_transfer_fails_cleanly_and_resumes_once_space_is_freed() {
    let _turn = turn(Needs::Nothing).await;
    let (src, id) = seeded(71, (40_000, 1_000, 5_000));
    // Room for the partition and its headroom (64 MiB) at the start.
    let disk = SmallDisk::new(128);
    let filler = disk.path().join("other-writer");
    // Slow enough to fill the disk while bytes arrive.
    let s = server_at(src.path(), 8 << 20, |_| {}).await;
    let f = Arc::new(fetcher(|_| {}));
    let progress = Arc::new(Progress::default());
    let fetch = {
        let (f, p, root, peers, id) = (
            f.clone(),
            progress.clone(),
            disk.path().to_owned(),
            [peer(&s)],
            id.clone(),
        );
        tokio::spawn(async move { f.fetch_with_progress(&id, &peers, &root, &p).await })
    };
    while progress.received.load(Ordering::Relaxed) < 8 << 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another writer takes all but about 1 MiB of what is left (or all of it, when the fetch's
    // own writes leave it less meanwhile).
    fill(&filler, 1 << 20);
    let err = tokio::time::timeout(Duration::from_secs(60), fetch)
        .await
        .expect("the fetch ended")
        .unwrap()
        .unwrap_err();
    assert_eq!(attempt_error(&err).label(), "insufficient_space", "{err}");
    assert_eq!(err.fallback(), Fallback::None);
    assert!(!id.dir(disk.path()).exists(), "no partition appeared");
    let kept = temp_dirs(disk.path());
    assert_eq!(kept.len(), 1, "what arrived is kept: {kept:?}");
    assert!(kept[0]
        .join(quicstrap::client::resume::JOURNAL_FILE)
        .is_file());
    assert!(open_fds_under(disk.path()).is_empty(), "file handle left");

    // Space returns: the next fetch resumes, with only the missing bytes.
    std::fs::remove_file(&filler).unwrap();
    let started = std::time::Instant::now();
    let report = f.fetch(&id, &[peer(&s)], disk.path()).await.unwrap();
    let resumed_in = started.elapsed();
    assert!(
        report.attempts[0].resumed_bytes >= 4 << 20,
        "resumed only {} bytes",
        report.attempts[0].resumed_bytes
    );
    assert_same(&id.dir(src.path()), &id.dir(disk.path()));
    assert!(temp_dirs(disk.path()).is_empty());
    // For CHAOS.md: from space freed to the partition in place.
    chaos_outcome("disk_filled_mid_transfer", true, resumed_in, 0);
    s.shutdown().await;
}

/// Writes `path` in 1 MiB pieces, as another process filling the disk would, until its
/// filesystem has `leave` bytes free or none at all.
fn fill(path: &std::path::Path, leave: u64) {
    use std::io::Write;
    let mut out = std::fs::File::create(path).unwrap();
    let piece = vec![0u8; 1 << 20];
    while free(path.parent().unwrap()) > leave + piece.len() as u64 {
        match out.write_all(&piece) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = out.sync_all();
}
