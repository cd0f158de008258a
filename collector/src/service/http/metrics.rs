//! `/metrics` in Prometheus' text format, from the `prometheus` crate. What moves is counted
//! where it moves: every job transition by its target state (in the one write path of the
//! job lifecycle), the wait of a runnable job for a launcher, a DAG's time from acceptance to
//! its last JOB_FINISHED, and what `serve` received (reported by each session as it ends).
//! What is a state (jobs and launchers by state) is read from the database at each scrape.
//! The beamline's side of the latencies (section landed → stack finished → DAG accepted) is
//! the agent's, in its textfile.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

/// Everything the service exports.
pub struct Metrics {
    registry: Registry,
    jobs: IntGaugeVec,
    launchers: IntGaugeVec,
    transitions: IntCounterVec,
    queue_wait: Histogram,
    launcher_wait: Histogram,
    dag_seconds: Histogram,
    files: IntCounter,
    bytes: IntCounter,
    verify_failures: IntCounter,
    resumes: IntCounter,
    stacks: IntCounter,
    scheduler_calls: IntCounterVec,
    scheduler_seconds: prometheus::CounterVec,
    launcher_nodes: IntGaugeVec,
    step_seconds: prometheus::GaugeVec,
}

/// What a scrape reads from the database: the gauges of what is, not of what happened.
pub struct Scrape<'a> {
    /// Jobs by state, and every state's name (states with none are written as 0).
    pub jobs: (&'a [(String, i64)], &'a [&'a str]),
    /// Launchers by state, and every state's name.
    pub launchers: (&'a [(String, i64)], &'a [&'a str]),
    /// The launchers queued or running, for their shapes.
    pub live: &'a [beamflow_protocol::api::LauncherRow],
    /// Each workflow step's expected run time as learned: (workflow, step, seconds).
    pub learned: &'a [(String, String, f64)],
}

/// The service's metrics: one set per process, as Prometheus scrapes one process.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

// the names and buckets are literals: building them cannot fail
#[allow(clippy::expect_used)]
impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new_custom(Some("beamflow".into()), None).expect("a valid prefix");
        let gauge = |name: &str, help: &str| {
            registered(&r, IntGaugeVec::new(Opts::new(name, help), &["state"]))
        };
        let counter = |name: &str, help: &str| registered(&r, IntCounter::new(name, help));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            registered(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
            )
        };
        let transitions = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "job_transitions_total",
                    "Job state changes, by the state entered",
                ),
                &["state"],
            ),
        );
        let (scheduler_calls, scheduler_seconds) = scheduler_counters(&r);
        let (launcher_nodes, step_seconds) = shape_gauges(&r);
        Metrics {
            launcher_nodes,
            step_seconds,
            scheduler_calls,
            scheduler_seconds,
            jobs: gauge("jobs", "Jobs by state"),
            launchers: gauge("launchers", "Launchers by state"),
            transitions,
            // 1 ms to about 9 hours
            queue_wait: histogram(
                "queue_wait_seconds",
                "Time a runnable job waited for a launcher's slot",
                exponential_buckets(0.001, 4.0, 15).expect("valid buckets"),
            ),
            // 1 s to about 12 days
            launcher_wait: histogram(
                "launcher_queue_wait_seconds",
                "Time a launcher waited in its batch queue before it started",
                exponential_buckets(1.0, 3.0, 14).expect("valid buckets"),
            ),
            dag_seconds: histogram(
                "dag_accepted_to_done_seconds",
                "Time from a stack version's DAG accepted to its last job JOB_FINISHED",
                exponential_buckets(1.0, 2.0, 18).expect("valid buckets"),
            ),
            files: counter("received_files_total", "Files serve received and verified"),
            bytes: counter(
                "received_bytes_total",
                "Bytes of files serve received and verified",
            ),
            verify_failures: counter(
                "verify_failures_total",
                "Files whose BLAKE3 did not match after transfer (refused, sent again)",
            ),
            resumes: counter(
                "resumes_total",
                "Files resumed from a verified prefix or sent as a delta",
            ),
            stacks: counter(
                "stacks_accepted_total",
                "Stack versions whose DAG was accepted",
            ),
            registry: r,
        }
    }

    /// A job entered `state`.
    pub fn transition(&self, state: &str) {
        self.transitions.with_label_values(&[state]).inc();
    }

    /// A runnable job waited this long for a slot.
    pub fn queue_wait(&self, secs: f64) {
        self.queue_wait.observe(secs.max(0.0));
    }

    /// A launcher started this long after it was submitted.
    pub fn launcher_waited(&self, secs: f64) {
        self.launcher_wait.observe(secs.max(0.0));
    }

    /// A DAG finished this long after it was accepted.
    pub fn dag_done(&self, secs: f64) {
        self.dag_seconds.observe(secs.max(0.0));
    }

    /// A stack version's DAG was accepted.
    pub fn stack_accepted(&self) {
        self.stacks.inc();
    }

    /// What one `serve` session received.
    pub fn received(&self, r: &crate::api::Received) {
        self.files.inc_by(r.files);
        self.bytes.inc_by(r.bytes);
        self.verify_failures.inc_by(r.verify_failures);
        self.resumes.inc_by(r.resumes);
    }

    /// The text a scrape gets (Prometheus' text format 0.0.4), with the gauges set from what
    /// the database holds now.
    pub fn render(&self, now: &Scrape) -> String {
        for (family, (counts, all)) in [(&self.jobs, now.jobs), (&self.launchers, now.launchers)] {
            for name in all {
                let n = counts.iter().find(|(s, _)| s == name).map_or(0, |x| x.1);
                family.with_label_values(&[name]).set(n);
            }
        }
        // launchers that ended leave the gauge with them
        self.launcher_nodes.reset();
        for l in now.live {
            let shape = if l.window { "window" } else { "fixed" };
            self.launcher_nodes
                .with_label_values(&[l.queue.as_str(), l.state.as_str(), shape])
                .add(l.nodes as i64);
        }
        for (workflow, step, secs) in now.learned {
            self.step_seconds
                .with_label_values(&[workflow.as_str(), step.as_str()])
                .set(*secs);
        }
        // the batch systems' calls are counted where they are paced: brought up to date here
        for (queue, call, ok, failed, secs) in crate::scheduler::pace::calls() {
            for (outcome, n) in [("ok", ok), ("failed", failed)] {
                let c = self
                    .scheduler_calls
                    .with_label_values(&[queue.as_str(), call, outcome]);
                c.inc_by(n.saturating_sub(c.get()));
            }
            let c = self
                .scheduler_seconds
                .with_label_values(&[queue.as_str(), call]);
            c.inc_by((secs - c.get()).max(0.0));
        }
        let mut out = Vec::new();
        // writing to a Vec cannot fail
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A metric built and registered in one step.
// the names and labels are literals: building and registering once cannot fail
#[allow(clippy::expect_used)]
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<M>,
) -> M {
    let m = m.expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

/// The gauges of the launchers' shapes and the steps' learned run times, registered.
fn shape_gauges(r: &Registry) -> (IntGaugeVec, prometheus::GaugeVec) {
    let nodes = Opts::new(
        "launcher_nodes",
        "Nodes of the launchers queued or running, by queue, state and shape \
         (a backfill window or the queue's fixed size)",
    );
    let learned = Opts::new(
        "step_expected_seconds",
        "Each workflow step's expected run time, learned from its recent runs (90th percentile)",
    );
    (
        registered(r, IntGaugeVec::new(nodes, &["queue", "state", "shape"])),
        registered(r, prometheus::GaugeVec::new(learned, &["workflow", "step"])),
    )
}

/// The counters of calls to the batch systems and of the time spent on them, registered.
fn scheduler_counters(r: &Registry) -> (IntCounterVec, prometheus::CounterVec) {
    let calls = Opts::new(
        "scheduler_calls_total",
        "Calls to the batch systems (status polls, submissions), by queue, call and outcome",
    );
    let seconds = Opts::new(
        "scheduler_call_seconds_total",
        "Time spent waiting for the batch systems' answers, by queue and call",
    );
    (
        registered(r, IntCounterVec::new(calls, &["queue", "call", "outcome"])),
        registered(r, prometheus::CounterVec::new(seconds, &["queue", "call"])),
    )
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
