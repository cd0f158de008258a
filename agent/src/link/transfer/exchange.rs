//! One channel's conversation: its files offered, each sent as the collector's answer asks
//! (nothing, a delta, the rest after a verified prefix, the whole), every acknowledgement
//! waited for, and, on the channel that submits, the submission and its acceptance.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn exchange(
    cfg: &Config,
    job: &Job,
    ids: &[usize],
    submit: bool,
    rate: u64,
    wr: &mut impl Sink,
    s: &mut Session<'_>,
    report: &mut Report,
) -> Result<Option<Accepted>, TransferError> {
    let chunk = cfg.link.chunk_size.0.clamp(4096, 8 << 20) as usize;
    offer(wr, job, ids)?;
    let mut sent_ids = Vec::new();
    // no larger than the largest file: small stacks do not map and unmap a chunk each
    let largest = ids.iter().map(|&i| job.files[i].size).max().unwrap_or(0);
    let mut buf = vec![0u8; chunk.min(largest.max(1) as usize)];
    let mut pace = Pace::new(rate).with_compression(cfg.link.compress);
    for &i in ids {
        let f = &job.files[i];
        let id = i as u64;
        while !s.have.contains_key(&id) {
            let fr = s.next()?;
            if let Some(other) = s.absorb(fr) {
                return Err(unexpected(other));
            }
        }
        if s.acked.get(&id) == Some(&false) {
            continue; // refused at offer time
        }
        let path = job.dir.join(&f.name);
        let start = match s.have[&id].clone() {
            Have::Same => {
                s.acked.insert(id, true);
                report.same += 1;
                if submit_pass_counts(submit, ids, job) {
                    Progress::add(job, f.size, 1);
                }
                continue;
            }
            Have::Delta { signature } => {
                if send_delta(wr, id, f, &path, signature, chunk, report, &mut pace)? {
                    Progress::add(job, f.size, 1);
                    sent_ids.push(id);
                    s.drain()?;
                    continue;
                }
                0 // the signature is unusable: send the file whole
            }
            Have::Nothing => 0,
            // resume only from a prefix whose bytes are ours
            Have::Prefix { len, hash } => match hash_prefix(&path, len) {
                Ok((n, h)) if n == len && *h.finalize().as_bytes() == hash => len,
                _ => 0,
            },
        };
        Progress::add(job, start, 0);
        let out = Outgoing {
            wr: &mut *wr,
            id,
            f,
            buf: &mut buf,
            report: &mut *report,
            pace: &mut pace,
            job,
        };
        out.send(&path, start)?;
        Progress::add(job, 0, 1);
        sent_ids.push(id);
        s.drain()?;
    }
    wr.flush().map_err(broken_io)?;
    s.wait_acks(&sent_ids)?;
    if !submit {
        return Ok(None);
    }
    submit_stack(wr, s, job).map(Some)
}

/// Offers the files `ids` of `job`: the collector answers what it has of each.
pub(super) fn offer(wr: &mut impl Sink, job: &Job, ids: &[usize]) -> Result<(), TransferError> {
    for &i in ids {
        let f = &job.files[i];
        let offer = Frame::Offer {
            id: i as u64,
            path: wire_path(job, f),
            size: f.size,
            hash: f.blake3,
        };
        write_frame(wr, &offer).map_err(broken)?;
    }
    wr.flush().map_err(broken_io)
}

/// A file's path on the wire: the stack's name, then the file's.
pub(super) fn wire_path(job: &Job, f: &FileRecord) -> String {
    format!("{}/{}", job.name, f.name)
}

/// Submits the stack version, every file of it named with its size and hash, and waits for
/// the collector to accept it.
pub(super) fn submit_stack(
    wr: &mut impl Sink,
    s: &mut Session<'_>,
    job: &Job,
) -> Result<Accepted, TransferError> {
    let files = job
        .files
        .iter()
        .map(|f| FileEntry {
            path: wire_path(job, f),
            size: f.size,
            hash: f.blake3,
        })
        .collect();
    let submit = Frame::Submit {
        stack: job.name.clone(),
        version: job.version,
        workflow: job.workflow.clone(),
        files,
        keep_older: job.keep_older,
        partial: job.partial,
    };
    write_frame(wr, &submit).map_err(broken)?;
    wr.flush().map_err(broken_io)?;
    loop {
        match s.next()? {
            Frame::Accepted {
                remote_id,
                created,
                jobs,
                ..
            } => {
                return Ok(Accepted {
                    remote_id,
                    created,
                    jobs,
                })
            }
            Frame::Error {
                code: ErrorCode::ServiceUnavailable,
                message,
            } => return Err(TransferError::ServiceUnavailable(message)),
            Frame::Error {
                code: ErrorCode::SubmitRefused,
                message,
            } => return Err(TransferError::SubmitRefused(message)),
            Frame::Error { message, .. } => return Err(TransferError::Broken(message)),
            other => {
                if let Some(other) = s.absorb(other) {
                    return Err(unexpected(other));
                }
            }
        }
    }
}

/// The submitting pass re-offers files the other channels carried: they were counted there.
pub(super) fn submit_pass_counts(submit: bool, ids: &[usize], job: &Job) -> bool {
    !submit || ids.len() == job.files.len()
}
