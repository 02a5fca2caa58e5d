//! Writes the fuzz seed corpus: one file per well-formed frame of each kind, so the fuzzer
//! starts from valid inputs. Run: `cargo run -p quicstrap-proto --example seed_corpus`.

use quicstrap_proto::*;

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/frame_decoder");
    std::fs::create_dir_all(&dir)?;
    let req = Request {
        version: PROTOCOL_VERSION,
        transfer_id: 1,
        store: "store".into(),
        store_version: 1,
        partition: 0,
        table_format: TableFormat::Block,
        checksum: ChecksumAlgo::Md5,
        resume: None,
    };
    let resume = Request {
        resume: Some(Resume {
            snapshot: SnapshotId([5; 16]),
            files: vec![FileStart {
                index: 2,
                offset: 4096,
            }],
        }),
        ..req.clone()
    };
    let frames = [
        ("request", ControlFrame::Request(req)),
        ("resume", ControlFrame::Request(resume)),
        (
            "accept",
            ControlFrame::Accept(Accept {
                files: vec![
                    FileEntry {
                        name: "000001.sst".into(),
                        size: 42,
                        digest: vec![1; 16],
                    },
                    FileEntry {
                        name: "000002.sst".into(),
                        size: 7,
                        digest: Vec::new(),
                    },
                ],
                snapshot: SnapshotId([5; 16]),
                meta: PartitionMeta {
                    offset: Some(7),
                    version_state: None,
                },
            }),
        ),
        (
            "reject",
            ControlFrame::Reject(Reject {
                reason: RejectReason::Busy,
                message: "busy".into(),
            }),
        ),
        (
            "metadata",
            ControlFrame::Metadata(PartitionMeta {
                offset: Some(7),
                version_state: Some(VersionState {
                    table_format: TableFormat::Plain,
                    producer: "p".into(),
                }),
            }),
        ),
        ("complete", ControlFrame::Complete),
        ("done", ControlFrame::Done),
        ("abort", ControlFrame::Abort { reason: "x".into() }),
        ("suspend", ControlFrame::Suspend { reason: "x".into() }),
    ];
    for (name, f) in frames {
        std::fs::write(dir.join(name), encode(&f))?;
    }
    std::fs::write(
        dir.join("file_header"),
        encode(&FileHeader {
            transfer_id: 3,
            index: 9,
            offset: 0,
        }),
    )?;
    std::fs::write(
        dir.join("file_trailer"),
        encode(&FileTrailer {
            digest: vec![2; 16],
        }),
    )?;
    Ok(())
}
