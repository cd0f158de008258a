//! What a channel hears back: the collector's answers, gathered as they come (what it has
//! of each file, acknowledgements, refusals), the most serious failure kept.

use super::*;

pub(super) struct Session<'a> {
    pub(super) frames: &'a mpsc::Receiver<Result<Frame, ProtocolError>>,
    pub(super) have: HashMap<u64, Have>,
    pub(super) acked: HashMap<u64, bool>,
    pub(super) failed: Option<TransferError>,
    pub(super) names: Vec<String>,
}

impl Session<'_> {
    pub(super) fn next(&mut self) -> Result<Frame, TransferError> {
        match self.frames.recv() {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(broken(e)),
            Err(_) => Err(TransferError::Broken(
                "the collector closed the link".into(),
            )),
        }
    }

    /// Takes one frame about files into account; returns frames that are not about files.
    pub(super) fn absorb(&mut self, f: Frame) -> Option<Frame> {
        match f {
            Frame::HaveReply { id, have } => {
                self.have.insert(id, have);
            }
            Frame::Ack { id } => {
                self.acked.insert(id, true);
            }
            Frame::Nack { id, code, reason } => {
                let file = self
                    .names
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("#{id}"));
                self.acked.insert(id, false);
                self.have.entry(id).or_insert(Have::Same);
                let e = match code {
                    // the bytes did not hash to what the journal recorded: the file changed in a
                    // way its times did not show; hash it again before sending it again
                    ErrorCode::HashMismatch => TransferError::Changed { file, why: reason },
                    c if c.is_transient() => TransferError::FileFailed { file, reason },
                    _ => TransferError::Refused { file, reason },
                };
                // keep the most serious failure
                if self
                    .failed
                    .as_ref()
                    .is_none_or(|f| e.severity() > f.severity())
                {
                    self.failed = Some(e);
                }
            }
            other => return Some(other),
        }
        None
    }

    /// Takes in whatever answers are already here, without waiting.
    pub(super) fn drain(&mut self) -> Result<(), TransferError> {
        while let Ok(fr) = self.frames.try_recv() {
            if let Some(other) = self.absorb(fr.map_err(broken)?) {
                return Err(unexpected(other));
            }
        }
        Ok(())
    }

    /// Waits until every file in `sent` is acknowledged; the most serious failure among
    /// them, if any, is the answer.
    pub(super) fn wait_acks(&mut self, sent: &[u64]) -> Result<(), TransferError> {
        while sent.iter().any(|id| !self.acked.contains_key(id)) {
            let fr = self.next()?;
            if let Some(other) = self.absorb(fr) {
                return Err(unexpected(other));
            }
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
