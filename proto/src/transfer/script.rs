//! Drives both machines with an event sequence read from arbitrary bytes and checks, after
//! every step, that nothing invalid came out: no commit without a valid manifest, every file
//! validated, `Complete`, and the `Accept`'s metadata; no file received twice or outside the
//! manifest; no server `Complete` before every file was acknowledged, and never `Metadata`;
//! nothing after the end. Some client
//! scripts resume: then only the snapshot and manifest resumed from are accepted, only the
//! files asked for are received, each from its offset. Used by the
//! fuzz target `transfer_machines` and by a randomized unit test, so both check the same
//! things. Panics on a broken rule; that is the point.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::frame::*;
use crate::types::{ChecksumAlgo, PartitionMeta, SnapshotId, TableFormat};

use super::*;

/// Reads the script's bytes one at a time; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A frame: one of a few meaningful ones, or whatever the next bytes decode to.
    fn frame(&mut self) -> ControlFrame {
        match self.next() % 10 {
            0 => ControlFrame::Preparing,
            1 => ControlFrame::Accept(Accept {
                files: manifest(self.next()),
                snapshot: SnapshotId([self.next() % 2; 16]),
                meta: PartitionMeta {
                    offset: Some(u64::from(self.next())),
                    version_state: None,
                },
            }),
            2 => ControlFrame::Reject(Reject {
                reason: RejectReason::ALL[self.next() as usize % RejectReason::ALL.len()],
                message: "no".into(),
            }),
            3 => ControlFrame::Metadata(PartitionMeta {
                offset: Some(u64::from(self.next())),
                version_state: None,
            }),
            4 => ControlFrame::Complete,
            5 => ControlFrame::Done,
            6 => ControlFrame::Abort {
                reason: "bye".into(),
            },
            7 => {
                let mut req = request(u16::from(self.next() % 3));
                if self.next() % 2 == 1 {
                    let from = resume_from(self.next());
                    req.resume = Some(Resume {
                        snapshot: from.snapshot,
                        files: from.files,
                    });
                }
                ControlFrame::Request(req)
            }
            _ => {
                let n = (self.next() % 16) as usize;
                let raw: Vec<u8> = (0..n).map(|_| self.next()).collect();
                postcard::from_bytes(&raw).unwrap_or(ControlFrame::Complete)
            }
        }
    }

    fn delay(&mut self) -> Duration {
        Duration::from_millis(u64::from(self.next()) * 50)
    }
}

fn entry(name: &str) -> FileEntry {
    FileEntry {
        name: name.into(),
        size: 10,
        digest: vec![0; 16],
    }
}

/// A manifest: valid ones of 1 to 4 files, or one of several invalid ones.
fn manifest(pick: u8) -> Vec<FileEntry> {
    let valid = ["CURRENT", "MANIFEST-000001", "000001.sst", "OPTIONS-000002"];
    match pick % 10 {
        n @ 0..=3 => valid[..=n as usize].iter().map(|n| entry(n)).collect(),
        8 => {
            // Digests only where the server knew them; the rest come in trailers.
            let mut files: Vec<FileEntry> = valid.iter().map(|n| entry(n)).collect();
            files[1].digest.clear();
            files[3].digest.clear();
            files
        }
        4 => vec![entry("CURRENT"), entry("CURRENT")],
        5 => vec![entry("../CURRENT")],
        6 => vec![entry("000001.sst")],
        7 => {
            // A digest of another algorithm's length.
            let mut long = entry("CURRENT");
            long.digest = vec![0; 32];
            vec![long]
        }
        _ => vec![entry("CURRENT"), entry(RECEIPT_FILE)],
    }
}

/// A request for the one partition scripts and simulations play with.
pub(crate) fn request(version: u16) -> Request {
    Request {
        version,
        transfer_id: 1,
        store: "s".into(),
        store_version: 1,
        partition: 0,
        table_format: TableFormat::Block,
        checksum: ChecksumAlgo::Md5,
        resume: None,
    }
}

/// A resume of snapshot `[1; 16]` with the 4-file manifest, asking for some files from some
/// offsets, as `pick` says.
fn resume_from(pick: u8) -> ResumeFrom {
    let files = (0..4u32)
        .filter(|i| pick & (1 << i) != 0)
        .map(|index| FileStart {
            index,
            offset: u64::from(pick >> 4) % 11,
        })
        .collect();
    ResumeFrom {
        snapshot: SnapshotId([1; 16]),
        manifest: manifest(3),
        files,
    }
}

/// What the client has been told, to judge what it does.
#[derive(Default)]
struct Seen {
    manifest: Option<Vec<FileEntry>>,
    meta: Option<PartitionMeta>,
    complete: bool,
    handed_out: HashSet<u32>,
    reported_done: HashSet<u32>,
    ended: bool,
    /// Set for a resuming script.
    resume: Option<ResumeFrom>,
    snapshot: Option<SnapshotId>,
}

/// Runs `data` as a client script; panics if the client does something the protocol forbids.
pub fn run_client(data: &[u8]) {
    let limits = ClientLimits {
        max_files: 4,
        ..ClientLimits::default()
    };
    let mut now = Instant::now();
    let mut bytes = Bytes(data);
    let mut seen = Seen::default();
    let req = request(crate::PROTOCOL_VERSION);
    let mut c = match bytes.next() {
        pick if pick % 2 == 1 => {
            let from = resume_from(bytes.next());
            seen.resume = Some(from.clone());
            ClientTransfer::resume(req, from, limits, now)
        }
        _ => ClientTransfer::new(req, limits, now),
    };
    while !bytes.is_empty() {
        match bytes.next() % 12 {
            0 | 1 => {
                let frame = bytes.frame();
                if !c.is_ended() {
                    match &frame {
                        ControlFrame::Accept(a) if seen.manifest.is_none() => {
                            seen.manifest = Some(a.files.clone());
                            seen.snapshot = Some(a.snapshot);
                            seen.meta = Some(a.meta.clone());
                        }
                        ControlFrame::Complete => seen.complete = true,
                        _ => {}
                    }
                }
                c.handle_frame(frame, now);
            }
            2 | 3 => {
                let index = u32::from(bytes.next() % 5);
                let offset = u64::from(bytes.next() % 4);
                c.handle_file_stream(
                    FileHeader {
                        transfer_id: 1,
                        index,
                        offset,
                    },
                    now,
                );
            }
            4 | 5 => {
                let index = u32::from(bytes.next() % 5);
                if seen.handed_out.contains(&index) {
                    seen.reported_done.insert(index);
                }
                c.handle_file_done(index, 10, now);
            }
            6 => c.handle_file_progress(now),
            7 => c.handle_connection_closed(),
            8 => c.handle_control_end(now),
            9 => {
                now += bytes.delay();
                c.handle_timeout(now);
            }
            10 => c.handle_committed(if bytes.next() % 2 == 0 {
                Ok(())
            } else {
                Err("disk".into())
            }),
            _ => c.abort("cancel".into()),
        }
        while let Some(action) = c.poll_action() {
            check_client_action(&action, &mut seen);
        }
        if let Some(t) = c.poll_timeout() {
            assert!(
                t >= now - Duration::from_secs(3600),
                "a timeout far in the past"
            );
        }
    }
}

fn check_client_action(action: &ClientAction, seen: &mut Seen) {
    match action {
        ClientAction::ReceiveFile {
            index,
            entry,
            offset,
        } => {
            assert!(!seen.ended, "file asked for after the end");
            let files = seen.manifest.as_ref().expect("file before a manifest");
            assert!(
                check_manifest(files, 4, ChecksumAlgo::Md5).is_ok(),
                "file of an invalid manifest"
            );
            let wanted = match &seen.resume {
                None => Some(0),
                Some(r) => r.files.iter().find(|f| f.index == *index).map(|f| f.offset),
            };
            assert_eq!(
                wanted,
                Some(*offset),
                "file {index} not asked for, or from elsewhere"
            );
            let listed = files
                .get(*index as usize)
                .expect("file outside the manifest");
            assert!(
                same_files(std::slice::from_ref(listed), std::slice::from_ref(entry)),
                "file outside the manifest"
            );
            assert!(
                seen.handed_out.insert(*index),
                "file {index} handed out twice"
            );
        }
        ClientAction::Commit(meta) => {
            assert!(!seen.ended, "commit after the end");
            let files = seen.manifest.as_ref().expect("commit without a manifest");
            assert!(
                check_manifest(files, 4, ChecksumAlgo::Md5).is_ok(),
                "commit of an invalid manifest"
            );
            assert!(seen.complete, "commit before Complete");
            assert_eq!(seen.meta.as_ref(), Some(meta), "commit with other metadata");
            // Validated now, or (resuming) by the earlier attempt: not asked for again.
            let mut validated = seen.reported_done.clone();
            if let Some(r) = &seen.resume {
                validated.extend(
                    (0..files.len() as u32).filter(|i| r.files.iter().all(|f| f.index != *i)),
                );
            }
            let all: HashSet<u32> = (0..files.len() as u32).collect();
            assert_eq!(validated, all, "commit before every file validated");
        }
        ClientAction::Fail(_) => seen.ended = true,
        ClientAction::Accepted => {
            let files = seen.manifest.as_ref().expect("accepted without a manifest");
            assert!(
                check_manifest(files, 4, ChecksumAlgo::Md5).is_ok(),
                "accepted an invalid manifest"
            );
            if let Some(r) = &seen.resume {
                assert!(
                    same_files(&r.manifest, files),
                    "resumed from another manifest"
                );
                assert_eq!(
                    seen.snapshot,
                    Some(r.snapshot),
                    "resumed from another snapshot"
                );
            }
        }
        ClientAction::Send(_) | ClientAction::FinishSend => {}
    }
}

/// Runs `data` as a server script; panics if the server does something the protocol forbids.
pub fn run_server(data: &[u8]) {
    let limits = ServerLimits {
        table_format: TableFormat::Block,
        request_timeout: Duration::from_secs(10),
        idle: Duration::from_secs(8),
        partition_timeout: Duration::from_secs(60),
    };
    let mut now = Instant::now();
    let mut s = ServerTransfer::new(limits, now);
    let (mut leased, mut accepted, mut acked, mut ended) = (false, false, false, false);
    let mut lease_asked = false;
    let mut resume = None;
    let mut bytes = Bytes(data);
    while !bytes.is_empty() {
        match bytes.next() % 11 {
            0 => {
                let frame = bytes.frame();
                s.handle_request(Some(
                    &crate::codec::encode(&frame)[crate::codec::LEN_PREFIX..],
                ));
            }
            1 => {
                let n = (bytes.next() % 16) as usize;
                let raw: Vec<u8> = (0..n).map(|_| bytes.next()).collect();
                s.handle_request(Some(&raw));
            }
            2 => s.handle_request_error(None, "read".into()),
            3 => {
                if lease_asked && !leased {
                    leased = true;
                }
                s.handle_leased(now);
            }
            4 => s.handle_refused(RejectReason::Busy, "busy".into()),
            5 => s.handle_manifest(
                manifest(3),
                SnapshotId([1; 16]),
                PartitionMeta::default(),
                now,
            ),
            6 => s.handle_send_progress(now),
            7 => {
                if accepted {
                    acked = true;
                }
                s.handle_files_acked(now);
            }
            8 => s.handle_frame(bytes.frame()),
            9 => s.handle_control_end(),
            _ => {
                now += bytes.delay() * 20;
                s.handle_timeout(now);
            }
        }
        while let Some(action) = s.poll_action() {
            assert!(!ended, "{action:?} after the end");
            match action {
                ServerAction::Lease(req) => {
                    assert!(!lease_asked, "lease asked twice");
                    assert!(check_request(&req, TableFormat::Block).is_ok());
                    lease_asked = true;
                    resume = req.resume;
                }
                ServerAction::Send(ControlFrame::Accept(_)) => {
                    assert!(leased, "Accept without a lease");
                    accepted = true;
                }
                ServerAction::Send(ControlFrame::Metadata(_)) => {
                    panic!("Metadata sent: since version 3 the Accept carries it")
                }
                ServerAction::Send(ControlFrame::Complete) => {
                    assert!(acked, "Complete before every file was acknowledged")
                }
                ServerAction::Send(ControlFrame::Preparing) => {
                    assert!(leased && !accepted, "heartbeat outside the preparation")
                }
                ServerAction::PushFiles(plan) => {
                    assert!(accepted, "files pushed before Accept");
                    let wanted = push_plan(resume.as_ref(), &manifest(3));
                    assert_eq!(Ok(plan), wanted, "pushed other files than asked for");
                }
                ServerAction::End(ServerEnd::Done) => {
                    assert!(acked, "Done accepted before Complete");
                    ended = true;
                }
                ServerAction::End(_) => ended = true,
                ServerAction::Send(_) | ServerAction::FinishSend | ServerAction::StopReading => {}
            }
        }
    }
}

/// Drives the fetch machine ([`crate::fetch::FetchMachine`]) with arbitrary outcomes, cancels
/// and clocks, and checks after every step: only peers it was given are asked; a resume only
/// at the peer whose files are kept; a pause always ends in the future; an end is final; and
/// the number of attempts stays bounded (each peer once and once afresh, plus the resume
/// budget after each attempt that received bytes).
pub fn run_fetch(data: &[u8]) {
    use crate::fetch::{FetchMachine, FetchRules, Outcome, PeerId, Step};
    const OUTCOMES: [Outcome; 12] = [
        Outcome::Committed,
        Outcome::Cancelled,
        Outcome::Local,
        Outcome::Interrupted,
        Outcome::Unreachable,
        Outcome::Busy,
        Outcome::TooSlow,
        Outcome::ShuttingDown,
        Outcome::SnapshotGone,
        Outcome::ResumedPrefixBad,
        Outcome::Disproven,
        Outcome::Refused,
    ];
    let mut b = Bytes(data);
    let peers: Vec<PeerId> = (0..b.next() % 5)
        .map(|i| PeerId::new(format!("p{i}")))
        .collect();
    let holder = match b.next() % 6 {
        i if (i as usize) < peers.len() => Some(peers[i as usize].clone()),
        _ => None,
    };
    let rules = FetchRules {
        max_resumes: u32::from(b.next() % 12),
        ..FetchRules::default()
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut m = FetchMachine::new(peers.clone(), holder.clone(), rules, now);
    let mut kept = holder;
    let mut ended: Option<Step> = None;
    let mut attempts = 0u32;
    let mut progressed = 0u32;
    for _ in 0..400 {
        if b.is_empty() {
            break;
        }
        if b.next() % 16 == 0 {
            m.cancel();
        }
        let step = m.poll(now);
        if let Some(end) = &ended {
            assert_eq!(&step, end, "an end is final");
            continue;
        }
        match step {
            Step::Attempt { peer, resume } => {
                assert!(peers.contains(&peer), "asked a peer it was not given");
                if resume {
                    assert_eq!(kept.as_ref(), Some(&peer), "resumed another peer's files");
                }
                attempts += 1;
                let outcome = OUTCOMES[b.next() as usize % OUTCOMES.len()];
                let received = b.next() % 2 == 1;
                // This peer's files kept, the earlier holder's left alone, or nothing.
                let held = match b.next() % 3 {
                    0 if crate::fetch::keeps(outcome) => Some(peer),
                    1 => kept.clone(),
                    _ => None,
                };
                progressed += u32::from(received);
                now += b.delay();
                m.attempt_ended(outcome, received, held.clone(), now);
                kept = held;
            }
            Step::Wait(until) => {
                assert!(until > now, "a pause that has already ended");
                now = until;
            }
            end => ended = Some(end),
        }
        let bound = 2 * peers.len() as u32 + rules.max_resumes * (progressed + 1);
        assert!(
            attempts <= bound,
            "{attempts} attempts over the bound {bound}"
        );
    }
}
