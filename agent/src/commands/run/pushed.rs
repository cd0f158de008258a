//! Folders `beamflow-agent push` handed to the daemon ([`crate::handoff`]): finished by being
//! named, first in line for the warm link, and their end told to whoever waits for them.

use super::*;
use crate::handoff::{Answer, Sent};

impl Daemon {
    /// `push` named `dir`: the daemon takes it when it lies in one of its watch roots (else
    /// `push` sends it itself), and answers through `reply` as it goes.
    pub(super) fn handed(
        &mut self,
        dir: PathBuf,
        reply: mpsc::UnboundedSender<Answer>,
    ) -> Result<()> {
        let refuse = |reason: String| {
            let _ = reply.send(Answer::Refused { reason });
        };
        let Some(ri) = self.root_of(&dir) else {
            refuse(format!(
                "{} is in none of the running daemon's watch roots",
                dir.display()
            ));
            return Ok(());
        };
        let name = self.roots[ri].remote_name(&dir);
        if let Some(why) = self.unsendable(ri, &dir) {
            let _ = reply.send(Answer::Held { reason: why });
            return Ok(());
        }
        self.rescan(&dir, Instant::now())?;
        let Some(t) = self.stacks.get_mut(&dir) else {
            refuse(format!(
                "the running daemon tracks no images in {}",
                dir.display()
            ));
            return Ok(());
        };
        t.pushed = true;
        t.quiet = false;
        tracing::info!(stack = %name, "named by beamflow-agent push: it goes next");
        let _ = reply.send(Answer::Accepted {
            stack: name.clone(),
        });
        self.waiting_push.entry(name).or_default().push(reply);
        if self.ready.remove(&dir).is_some() {
            self.ready.insert(dir.clone(), i64::MIN);
        }
        self.dirty.insert(dir);
        self.poke(Duration::ZERO);
        Ok(())
    }

    /// Tells those waiting for stack `name` how it ended (or that it is tried again); a last
    /// answer ends their wait and the stack's being pushed.
    pub(super) fn tell_pushed(&mut self, name: &str, answer: Answer) {
        let last = answer.is_last();
        let Some(waiting) = self.waiting_push.get_mut(name) else {
            return;
        };
        waiting.retain(|w| w.send(answer.clone()).is_ok());
        if last || waiting.is_empty() {
            self.waiting_push.remove(name);
            let roots = &self.roots;
            for (dir, t) in self.stacks.iter_mut() {
                if t.pushed && roots[t.root].remote_name(dir) == name {
                    t.pushed = false;
                }
            }
        }
    }

    /// An attempt at a stack ended: a push waiting for it hears that the collector accepted
    /// it, or that it is tried again.
    pub(super) fn pushed_sent(
        &mut self,
        rec: &crate::journal::StackRecord,
        report: &Report,
        decision: &lifecycle::Decision,
    ) {
        let answer = match (&report.result, decision.next) {
            (Ok(acc), _) => Answer::Submitted(Sent::of(
                (&rec.name, rec.version),
                (rec.files, rec.bytes),
                report,
                acc,
            )),
            (Err(_), Next::RetryIn(_)) => Answer::Retrying {
                reason: decision.reason.clone(),
            },
            // held: said where it is held
            _ => return,
        };
        self.tell_pushed(&rec.name, answer);
    }

    /// A pushed stack's version the collector already holds: said at once.
    pub(super) fn already_sent(&mut self, rec: &crate::journal::StackRecord) {
        if !self.waiting_push.contains_key(&rec.name) {
            return;
        }
        let sent = Sent {
            stack: rec.name.clone(),
            version: rec.version,
            files: rec.files,
            bytes: rec.bytes,
            wire_bytes: 0,
            same: rec.files,
            remote_id: rec.remote_id.unwrap_or(0).max(0) as u64,
            jobs: 0,
            created: false,
            secs: 0.0,
        };
        self.tell_pushed(&rec.name, Answer::Submitted(sent));
    }
}
