//! The rules of a resumed transfer, shared by both machines: which files a resume may ask
//! for, and which files a server pushes from where.

use crate::frame::{FileEntry, FileStart, Resume};
use crate::types::SnapshotId;

/// What a client holds of an earlier transfer from the same peer, to ask for the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The snapshot the earlier `Accept` named.
    pub snapshot: SnapshotId,
    /// The manifest the earlier `Accept` carried: the server must send the same one.
    pub manifest: Vec<FileEntry>,
    /// Files still needed, ascending by index, each with the bytes already held.
    pub files: Vec<FileStart>,
}

/// A resume's list fits `files`: ascending unique indexes inside the manifest, offsets no
/// larger than the file. `Err` says what is wrong, for a `BadRequest` or a protocol error.
pub fn check_resume(resume: &Resume, files: &[FileEntry]) -> Result<(), String> {
    let mut last: Option<u32> = None;
    for f in &resume.files {
        if last.is_some_and(|l| f.index <= l) {
            return Err(format!("resume lists index {} out of order", f.index));
        }
        last = Some(f.index);
        let Some(entry) = files.get(f.index as usize) else {
            return Err(format!(
                "resume lists index {} outside the manifest",
                f.index
            ));
        };
        if f.offset > entry.size {
            return Err(format!(
                "resume offset {} past the end of {} ({} bytes)",
                f.offset, entry.name, entry.size
            ));
        }
    }
    Ok(())
}

/// The files a server sends, in order, and where each stream starts: every file from byte 0
/// for a fresh transfer, the listed ones from their offsets for a resume.
pub fn push_plan(resume: Option<&Resume>, files: &[FileEntry]) -> Result<Vec<FileStart>, String> {
    match resume {
        None => Ok((0..files.len() as u32)
            .map(|index| FileStart { index, offset: 0 })
            .collect()),
        Some(r) => check_resume(r, files).map(|()| r.files.clone()),
    }
}
