//! The agent's metrics, in node-exporter's textfile format: the agent listens on no port, so
//! it writes `[agent] metrics_file` (atomically, as the textfile collector requires) and the
//! site's node exporter serves it. It holds the beamline's side of the stage latencies
//! (section landed → stack finished → DAG accepted; the collector's `/metrics` has DAG
//! accepted → JOB_FINISHED), stacks by state, and what was sent.

use crate::journal::StackRecord;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::path::Path;

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    stacks: IntGaugeVec,
    stage: HistogramVec,
    sent_bytes: IntCounter,
    submitted: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// the names and buckets are literals: building them cannot fail
#[allow(clippy::expect_used)]
impl Metrics {
    /// A fresh set (counters start at zero with the process, as Prometheus expects).
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("beamflow_agent".into()), None).expect("a valid prefix");
        let stacks = IntGaugeVec::new(Opts::new("stacks", "Stacks by state"), &["state"])
            .expect("valid metric");
        let stage = HistogramVec::new(
            HistogramOpts::new(
                "stage_seconds",
                "Time between stages at the beamline: landed_to_finished (newest section written to stack decided finished), finished_to_accepted (to the DAG accepted)",
            )
            .buckets(exponential_buckets(0.01, 3.0, 14).expect("valid buckets")),
            &["stage"],
        )
        .expect("valid metric");
        let sent_bytes = IntCounter::new("sent_bytes_total", "Bytes that travelled on the link")
            .expect("valid metric");
        let submitted = IntCounter::new("submitted_total", "Stack versions whose DAG was accepted")
            .expect("valid metric");
        for c in [
            Box::new(stacks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage.clone()),
            Box::new(sent_bytes.clone()),
            Box::new(submitted.clone()),
        ] {
            r.register(c).expect("registered once");
        }
        Metrics {
            registry: r,
            stacks,
            stage,
            sent_bytes,
            submitted,
        }
    }

    /// A stack version was accepted: its stage times and what it sent.
    pub fn accepted(
        &self,
        landed_to_finished: Option<f64>,
        finished_to_accepted: Option<f64>,
        sent: u64,
    ) {
        if let Some(s) = landed_to_finished {
            self.stage
                .with_label_values(&["landed_to_finished"])
                .observe(s.max(0.0));
        }
        if let Some(s) = finished_to_accepted {
            self.stage
                .with_label_values(&["finished_to_accepted"])
                .observe(s.max(0.0));
        }
        self.sent_bytes.inc_by(sent);
        self.submitted.inc();
    }

    /// The text, with stacks counted by state from the journal.
    pub fn render(&self, stacks: &[StackRecord]) -> String {
        for st in crate::stack::lifecycle::StackState::ALL
            .iter()
            .map(|s| s.as_str())
        {
            let n = stacks.iter().filter(|s| s.state.as_str() == st).count();
            self.stacks.with_label_values(&[st]).set(n as i64);
        }
        let mut out = Vec::new();
        // writing to a Vec cannot fail
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Writes the textfile atomically (a temporary name beside it, then a rename), as
    /// node-exporter's textfile collector needs.
    pub fn write(&self, path: &Path, stacks: &[StackRecord]) -> std::io::Result<()> {
        let tmp = path.with_extension("prom.tmp");
        std::fs::write(&tmp, self.render(stacks))?;
        std::fs::rename(&tmp, path)
    }
}
