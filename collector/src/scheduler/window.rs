//! Backfill windows: nodes a batch system has free now, and for how long, so that a launcher
//! can be shaped to fit them and start at once instead of waiting behind bigger jobs. What
//! each batch system says is parsed here; what to submit is decided by [`shape`], a pure
//! function of the windows, the work and the queue's limits.

use super::SchedError;
use beamflow_config::QueueSection;
use std::time::{Duration, SystemTime};

/// Nodes free now, and how long they stay free (none: as long as the queue allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Whole nodes free.
    pub nodes: u32,
    /// How long they stay free: until the next job's expected start or the partition's
    /// time limit; none when neither bounds it.
    pub lasts: Option<Duration>,
}

/// The launcher to submit: its nodes and wall time, and why that shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Nodes to ask for.
    pub nodes: u32,
    /// Wall time to ask for.
    pub walltime: Duration,
    /// Whether it fits a window (it should start at once) or is the queue's fixed size.
    pub from_window: bool,
    /// Why, for people.
    pub why: String,
}

/// The shape of the next launcher for work wanting `want` nodes: the window with the largest
/// nodes × time the work can use (never wider than `max_nodes` or the work, never narrower
/// than `min_nodes`, never shorter than `min_walltime`, wall time = window − `walltime_pad`,
/// at most the queue's `walltime`); the queue's fixed size where no window fits.
pub fn shape(windows: &[Window], want: u32, q: &QueueSection) -> Shape {
    let fixed = Shape {
        nodes: want.clamp(q.min_nodes, q.max_nodes),
        walltime: q.walltime.0,
        from_window: false,
        why: String::new(),
    };
    let best = windows
        .iter()
        .filter_map(|w| {
            let nodes = w.nodes.min(q.max_nodes).min(want.max(q.min_nodes));
            // a window that ends when another job starts leaves walltime_pad to spare
            let walltime = w
                .lasts
                .map_or(q.walltime.0, |d| d.saturating_sub(q.walltime_pad.0))
                .min(q.walltime.0);
            (nodes >= q.min_nodes && nodes > 0 && walltime >= q.min_walltime.0)
                .then_some((w, nodes, walltime))
        })
        .max_by_key(|(_, nodes, wall)| *nodes as u128 * wall.as_secs() as u128);
    let fmt = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    match best {
        Some((w, nodes, walltime)) => Shape {
            nodes,
            walltime,
            from_window: true,
            why: format!(
                "{} node(s) free for {}: {nodes} node(s) for {} (the window less walltime_pad {})",
                w.nodes,
                w.lasts
                    .map_or("as long as the queue allows".into(), |d| fmt(d).to_string()),
                fmt(walltime),
                q.walltime_pad
            ),
        },
        None => Shape {
            why: match windows.is_empty() {
                true => "no free nodes: the queue's fixed size".into(),
                false => format!(
                    "no window of at least {} node(s) for min_walltime {}: the queue's fixed size",
                    q.min_nodes, q.min_walltime
                ),
            },
            ..fixed
        },
    }
}

/// A Slurm duration as `sinfo %l` and `squeue %l` print it: `infinite`, `MM`, `MM:SS`,
/// `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`; none for `infinite`/`UNLIMITED`.
pub fn slurm_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("infinite") || s.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let bad = || format!("{s:?} is not a Slurm time");
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().map_err(|_| bad())?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (h, m, sec) = match (s.contains('-'), parts.as_slice()) {
        (false, [m]) => (0, *m, 0),
        (false, [m, sec]) => (0, *m, *sec),
        (_, [h, m, sec]) => (*h, *m, *sec),
        (true, [h]) => (*h, 0, 0),
        (true, [h, m]) => (*h, *m, 0),
        _ => return Err(bad()),
    };
    Ok(Some(Duration::from_secs(
        days * 86_400 + h * 3600 + m * 60 + sec,
    )))
}

/// Slurm's windows from `sinfo -h -t idle -o "%D %l"` (idle nodes and the partition's time
/// limit, a line per partition) and `squeue -h -t PD --start -o "%S %D"` (the expected start
/// of each pending job): the idle nodes stay free until the earliest expected start.
pub fn slurm_windows(
    sinfo: &str,
    starts: &str,
    now: SystemTime,
) -> Result<Vec<Window>, SchedError> {
    let parse = |command: &str, message: String| SchedError::Parse {
        command: command.into(),
        message,
    };
    let next_start = starts
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|t| *t != "N/A" && *t != "Unknown")
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| parse("squeue --start", format!("{t:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .min();
    let until_next = next_start.map(|t| t.duration_since(now).unwrap_or_default());
    let mut out = Vec::new();
    for line in sinfo.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        let (Some(n), Some(limit)) = (it.next(), it.next()) else {
            return Err(parse(
                "sinfo",
                format!("{line:?}: want \"NODES TIMELIMIT\""),
            ));
        };
        let nodes: u32 = n
            .parse()
            .map_err(|_| parse("sinfo", format!("{line:?}: {n:?} is not a node count")))?;
        let limit = slurm_duration(limit).map_err(|e| parse("sinfo", e))?;
        let lasts = match (limit, until_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if nodes > 0 {
            out.push(Window { nodes, lasts });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> QueueSection {
        QueueSection {
            min_nodes: 1,
            max_nodes: 8,
            walltime: beamflow_config::Dur::secs(3600),
            min_walltime: beamflow_config::Dur::secs(600),
            walltime_pad: beamflow_config::Dur::secs(120),
            ..QueueSection::default()
        }
    }

    #[test]
    fn slurm_times_in_every_form_it_prints() {
        let m = |s| Some(Duration::from_secs(s));
        assert_eq!(slurm_duration("infinite"), Ok(None));
        assert_eq!(slurm_duration("30"), Ok(m(1800)));
        assert_eq!(slurm_duration("30:15"), Ok(m(1815)));
        assert_eq!(slurm_duration("1:00:00"), Ok(m(3600)));
        assert_eq!(slurm_duration("2-00"), Ok(m(2 * 86_400)));
        assert_eq!(slurm_duration("1-02:03"), Ok(m(86_400 + 2 * 3600 + 180)));
        assert_eq!(slurm_duration("1-02:03:04"), Ok(m(93_784)));
        assert!(slurm_duration("soon").is_err());
        assert!(slurm_duration("1:2:3:4").is_err());
    }

    /// `sinfo -h -t idle -o "%D %l"` and `squeue -h -t PD --start -o "%S %D"` as Slurm 22.05
    /// printed them on the test cluster: one idle node in a partition without a limit, and
    /// nothing pending; then the same with a pending job expected in 40 minutes.
    #[test]
    fn slurm_windows_last_until_the_next_pending_job_starts() {
        let now = humantime::parse_rfc3339("2026-12-06T10:00:00Z").unwrap();
        assert_eq!(
            slurm_windows("1 infinite\n", "", now).unwrap(),
            [Window {
                nodes: 1,
                lasts: None
            }]
        );
        let w = slurm_windows(
            "3 1:00:00\n",
            "2026-12-06T10:40:00 4\nN/A 1\n2026-12-06T11:30:00 2\n",
            now,
        )
        .unwrap();
        assert_eq!(
            w,
            [Window {
                nodes: 3,
                lasts: Some(Duration::from_secs(2400))
            }]
        );
        // a full machine: no idle line at all
        assert!(slurm_windows("", "", now).unwrap().is_empty());
        // malformed output is a clear error, not a panic
        let e = slurm_windows("many infinite\n", "", now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sinfo") && e.contains("not a node count"), "{e}");
        let e = slurm_windows("1 infinite\n", "tomorrow 1\n", now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("squeue --start"), "{e}");
    }

    #[test]
    fn the_shape_is_the_largest_window_the_work_can_use_or_the_fixed_size() {
        let q = queue();
        let min = |m: u64| Some(Duration::from_secs(m * 60));
        // 3 nodes for 40 minutes beat 8 nodes for 11 minutes (too short after the pad)
        let s = shape(
            &[
                Window {
                    nodes: 3,
                    lasts: min(40),
                },
                Window {
                    nodes: 8,
                    lasts: min(11),
                },
            ],
            8,
            &q,
        );
        assert_eq!(
            (s.nodes, s.walltime, s.from_window),
            (3, Duration::from_secs(38 * 60), true)
        );
        // never wider than the work
        let s = shape(
            &[Window {
                nodes: 6,
                lasts: min(30),
            }],
            2,
            &q,
        );
        assert_eq!((s.nodes, s.from_window), (2, true));
        // never longer than the queue's walltime, nor wider than max_nodes
        let s = shape(
            &[Window {
                nodes: 20,
                lasts: None,
            }],
            20,
            &q,
        );
        assert_eq!((s.nodes, s.walltime), (8, Duration::from_secs(3600)));
        // nothing fits: the fixed size, saying why
        let s = shape(
            &[Window {
                nodes: 4,
                lasts: min(5),
            }],
            4,
            &q,
        );
        assert_eq!(
            (s.nodes, s.walltime, s.from_window),
            (4, Duration::from_secs(3600), false)
        );
        assert!(s.why.contains("min_walltime"), "{}", s.why);
        let s = shape(&[], 1, &q);
        assert!(
            !s.from_window && s.why.contains("no free nodes"),
            "{}",
            s.why
        );
    }
}
