//! Streaming a stack while the detector writes it: when the sections sent ahead complete a
//! new chunk of pairs, the daemon submits them as a partial version, and the collector runs
//! those pairs' work at once. The version that seals the stack reuses that work by content.
//!
//! A partial version always holds a prefix of the stack in the collector's order (names
//! sorted bytewise) whose length ends a chunk of pairs (`k × chunk + 1` sections): its jobs
//! are then the sealed stack's first chunks, by name and by bytes.

use crate::stack::images::FileRecord;
use std::collections::HashMap;

/// What a streamed stack needs to decide whether a partial version is due.
#[derive(Debug, Clone)]
pub(super) struct Streaming {
    /// Pairs per chunk of the workflow's fanned-out steps, and the pairs a stack needs
    /// before they spread (none streams before).
    pub chunk: (usize, usize),
    /// Sections the last partial version held (0: none yet).
    pub streamed: usize,
    /// The stack's sections as scanned, in the collector's order.
    pub order: Vec<String>,
    /// Sections at the collector as they are now (sent ahead before, unchanged since).
    pub sent: HashMap<String, FileRecord>,
    /// What the journal says went before this batch (name → BLAKE3): a section sent again
    /// with the same bytes (after a restart) was not rewritten.
    pub journaled: HashMap<String, [u8; 32]>,
}

impl Streaming {
    /// The partial version due after `acked` arrived (names now at the collector, `rewritten`
    /// ones among them sent again after a partial version held them): its sections, or none.
    pub fn due(&self, acked: &[FileRecord]) -> Option<Vec<FileRecord>> {
        let mut sent = self.sent.clone();
        for f in acked {
            sent.insert(f.name.clone(), f.clone());
        }
        let held = &self.order[..self.streamed.min(self.order.len())];
        let rewritten = acked
            .iter()
            .any(|f| held.contains(&f.name) && self.journaled.get(&f.name) != Some(&f.blake3));
        let n = sections_due(
            &self.order,
            |n| sent.contains_key(n),
            self.chunk,
            self.streamed,
            rewritten,
        )?;
        Some(self.order[..n].iter().map(|n| sent[n].clone()).collect())
    }
}

/// How many sections (a prefix of `order`) a partial version should hold now: the longest
/// prefix at the collector, cut to whole chunks of pairs, when it holds a chunk more than the
/// last one did or a section the last one held was rewritten; none before the prefix has
/// the pairs a stack needs to spread (`from`), where the sealed stack would not fan out.
pub(super) fn sections_due(
    order: &[String],
    at_collector: impl Fn(&str) -> bool,
    (chunk, from): (usize, usize),
    streamed: usize,
    rewritten: bool,
) -> Option<usize> {
    let there = order.iter().take_while(|n| at_collector(n)).count();
    let chunks = there.saturating_sub(1) / chunk.max(1);
    let pairs = chunks * chunk.max(1);
    let n = pairs + 1;
    (chunks > 0 && pairs >= from && (n > streamed || rewritten && n >= streamed)).then_some(n)
}

/// The pairs per chunk that streaming waits for and the pairs a stack needs before they
/// spread: the workflow's fanned-out step with the smallest chunk (none: the workflow has
/// nothing to run before the seal).
pub(super) fn chunk_of(wf: Option<&beamflow_config::Workflow>) -> Option<(usize, usize)> {
    wf?.steps
        .iter()
        .filter(|s| s.each != beamflow_config::Each::Stack)
        .map(|s| (s.chunk.max(1) as usize, s.spreads_from()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i:03}.tif")).collect()
    }

    #[test]
    fn a_partial_version_holds_whole_chunks_of_pairs_of_the_prefix_that_arrived() {
        let order = names(32);
        let upto = |k: usize| move |n: &str| order_index(n) < k;
        // 8 sections: 7 pairs, no whole chunk of 8 yet
        assert_eq!(sections_due(&order, upto(8), (8, 8), 0, false), None);
        // 9 sections: pairs 0–7
        assert_eq!(sections_due(&order, upto(9), (8, 8), 0, false), Some(9));
        // 12 sections: still pairs 0–7, already streamed
        assert_eq!(sections_due(&order, upto(12), (8, 8), 9, false), None);
        // 17: pairs 0–15
        assert_eq!(sections_due(&order, upto(17), (8, 8), 9, false), Some(17));
        // a gap stops the prefix: section 3 not there yet
        assert_eq!(
            sections_due(
                &order,
                |n: &str| order_index(n) != 3 && order_index(n) < 20,
                (8, 8),
                0,
                false
            ),
            None
        );
        // a section of the last partial rewritten: the same prefix again, on its new bytes
        assert_eq!(sections_due(&order, upto(12), (8, 8), 9, true), Some(9));
        // a pair at a time (the built-in default): not before 8 pairs, then each section
        assert_eq!(sections_due(&order, upto(8), (1, 8), 0, false), None);
        assert_eq!(sections_due(&order, upto(9), (1, 8), 0, false), Some(9));
        assert_eq!(sections_due(&order, upto(10), (1, 8), 9, false), Some(10));
        assert_eq!(sections_due(&order, upto(10), (1, 8), 10, false), None);
    }

    fn order_index(n: &str) -> usize {
        n[1..4].parse().unwrap()
    }

    #[test]
    fn the_due_partial_carries_each_section_as_it_is_at_the_collector() {
        let order = names(10);
        let rec = |n: &str, h: u8| FileRecord {
            name: n.into(),
            size: 1,
            mtime_ns: 0,
            blake3: [h; 32],
            sent: true,
        };
        let s = Streaming {
            chunk: (8, 8),
            streamed: 0,
            sent: order[..5].iter().map(|n| (n.clone(), rec(n, 1))).collect(),
            order: order.clone(),
            journaled: HashMap::new(),
        };
        assert!(s.due(&[rec(&order[5], 2)]).is_none());
        let acked: Vec<_> = order[5..].iter().map(|n| rec(n, 2)).collect();
        let due = s.due(&acked).unwrap();
        assert_eq!(due.len(), 9);
        assert_eq!((due[0].blake3[0], due[8].blake3[0]), (1, 2));
        let again = Streaming {
            streamed: 9,
            sent: order.iter().map(|n| (n.clone(), rec(n, 1))).collect(),
            journaled: order.iter().map(|n| (n.clone(), [1; 32])).collect(),
            ..s
        };
        // section 2 rewritten and sent again
        assert_eq!(again.due(&[rec(&order[2], 3)]).unwrap()[2].blake3[0], 3);
        // sent again with the same bytes (a restart forgot what went ahead): nothing is due
        assert!(again.due(&[rec(&order[2], 1)]).is_none());
    }

    #[test]
    fn the_built_in_workflow_streams_in_its_chunks_and_a_whole_stack_one_does_not() {
        let cfg = beamflow_config::Config::parse("", std::path::Path::new("(defaults)")).unwrap();
        assert_eq!(chunk_of(cfg.workflows.get("aligntk")), Some((1, 8)));
        assert_eq!(chunk_of(cfg.workflows.get("qa")), None);
    }
}
