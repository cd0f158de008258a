//! When is a folder of images a finished stack? The rules of DESIGN.md as a pure function of
//! what was observed, so they can be tested exhaustively without clocks or files.
//!
//! A stack is finished when it holds at least `min_images`, a trigger fired, and every image
//! passed the structural TIFF check. The triggers: where the root sets `expect` or `marker`,
//! only they (and, past them, an optional `finish_after` of quiet): serial sections arrive
//! minutes apart, and quiet time would finish such a stack once per gap, each time with a
//! DAG over the stack so far. Where neither is set, quiet time (`settle`) finishes it. Images
//! still failing the check once the folder has been quiet for `settle` hold the stack with
//! their names and faults; it is never sent half-broken.

use std::time::Duration;

/// The rules of one watch root.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Fewest images a stack may have.
    pub min_images: u32,
    /// Marker file name, if the site writes one.
    pub marker: Option<String>,
    /// Expected image count, if known.
    pub expect: Option<u32>,
    /// Quiet period that counts as "finished".
    pub settle: Duration,
    /// Warn when still unfinished after this long.
    pub max_wait: Duration,
    /// Where `expect` or `marker` is set: finish anyway after this much quiet (off: `None`).
    pub finish_after: Option<Duration>,
}

impl Rules {
    /// Whether the root says itself how to know a stack is finished (a count or a marker):
    /// then quiet time alone never finishes one.
    pub fn counted(&self) -> bool {
        self.marker.is_some() || self.expect.is_some()
    }
}

/// What has been seen of one folder.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Images present.
    pub images: u32,
    /// The marker file exists.
    pub marker: bool,
    /// Time since anything in the folder last changed.
    pub quiet_for: Duration,
    /// Time since the folder was first seen.
    pub seen_for: Duration,
    /// Images failing the structural check: (file name, fault).
    pub invalid: Vec<(String, String)>,
    /// `beamflow-agent push` named the folder: it is finished by being named.
    pub named: bool,
}

/// What fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The marker file appeared.
    Marker,
    /// The expected count was reached.
    Expected,
    /// Nothing changed for `settle` (a root with neither `expect` nor `marker`).
    Settled,
    /// A counted or marked stack that was quiet for `finish_after` without its count or
    /// marker.
    QuietTooLong,
    /// `beamflow-agent push` named it.
    Named,
}

/// The decision for one folder now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not finished yet; the text says what it waits for.
    Waiting {
        /// For status.
        why: String,
        /// Still changing past `max_wait`: worth a warning.
        overdue: bool,
    },
    /// Finished and every image is whole: send it.
    Finished(Trigger),
    /// Quiet but unusable; needs more images or a person. The text names files and faults.
    Held(String),
}

fn list_faults(invalid: &[(String, String)]) -> String {
    let mut parts: Vec<String> = invalid
        .iter()
        .take(5)
        .map(|(f, e)| format!("{f}: {e}"))
        .collect();
    if invalid.len() > 5 {
        parts.push(format!("and {} more", invalid.len() - 5));
    }
    parts.join("; ")
}

/// Applies the rules. `invalid` is only consulted once a trigger fired, so callers may leave
/// it empty (and skip the check) until then.
pub fn decide(r: &Rules, o: &Observed) -> Verdict {
    let settled = o.quiet_for >= r.settle;
    let trigger = if o.named {
        Some(Trigger::Named)
    } else if r.marker.is_some() && o.marker {
        Some(Trigger::Marker)
    } else if r.expect.is_some_and(|n| o.images >= n) {
        Some(Trigger::Expected)
    } else if !r.counted() && settled {
        Some(Trigger::Settled)
    } else if r.counted() && r.finish_after.is_some_and(|f| o.quiet_for >= f) {
        Some(Trigger::QuietTooLong)
    } else {
        None
    };
    // a counted stack that is quiet but incomplete past max_wait is overdue too: it waits
    // for a count or a marker that may never come
    let overdue = o.seen_for >= r.max_wait && (r.counted() || !settled) && trigger.is_none();
    if o.images < r.min_images {
        if trigger.is_some() {
            return Verdict::Held(format!(
                "only {} image{} and nothing changed for {}; a stack needs at least {} (min_images)",
                o.images,
                if o.images == 1 { "" } else { "s" },
                humantime::format_duration(o.quiet_for.min(r.settle)),
                r.min_images
            ));
        }
        return Verdict::Waiting {
            why: format!("{} of at least {} images", o.images, r.min_images),
            overdue,
        };
    }
    let Some(t) = trigger else {
        // no counters in the text: it is journaled, and should change only when the state does
        let mut why = match (&r.marker, r.expect) {
            (None, None) => format!(
                "{} images; finished after {} without changes",
                o.images,
                humantime::format_duration(r.settle)
            ),
            (Some(m), None) => format!("{} images; finished when {m} appears", o.images),
            (None, Some(n)) => format!("{} of {n} images; finished at {n}", o.images),
            (Some(m), Some(n)) => format!(
                "{} of {n} images; finished at {n} or when {m} appears",
                o.images
            ),
        };
        if let (true, Some(f)) = (r.counted(), r.finish_after) {
            why.push_str(&format!(
                ", or after {} without changes (finish_after)",
                humantime::format_duration(f)
            ));
        }
        if overdue {
            why = format!(
                "not finished after {} (max_wait); {why}",
                humantime::format_duration(r.max_wait)
            );
        }
        return Verdict::Waiting { why, overdue };
    };
    if o.invalid.is_empty() {
        return Verdict::Finished(t);
    }
    // a folder named by push is finished by being named: what is not whole is said now
    if settled || o.named {
        Verdict::Held(list_faults(&o.invalid))
    } else {
        Verdict::Waiting {
            why: format!("not yet whole: {}", list_faults(&o.invalid)),
            overdue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> Rules {
        Rules {
            min_images: 2,
            marker: None,
            expect: None,
            settle: Duration::from_secs(30),
            max_wait: Duration::from_secs(3600),
            finish_after: None,
        }
    }

    #[test]
    fn a_named_folder_is_finished_at_once_unless_its_images_are_not_whole() {
        let r = Rules {
            expect: Some(10),
            ..rules()
        };
        let named = Observed {
            named: true,
            ..obs(3, 0)
        };
        assert_eq!(decide(&r, &named), Verdict::Finished(Trigger::Named));
        let broken = Observed {
            invalid: vec![("S_2.tif".into(), "truncated".into())],
            ..named
        };
        assert!(matches!(decide(&r, &broken), Verdict::Held(_)));
    }

    fn obs(images: u32, quiet: u64) -> Observed {
        Observed {
            images,
            quiet_for: Duration::from_secs(quiet),
            seen_for: Duration::from_secs(quiet),
            ..Default::default()
        }
    }

    #[test]
    fn settle_finishes_a_quiet_stack() {
        assert!(matches!(
            decide(&rules(), &obs(3, 10)),
            Verdict::Waiting { .. }
        ));
        assert_eq!(
            decide(&rules(), &obs(3, 30)),
            Verdict::Finished(Trigger::Settled)
        );
    }

    #[test]
    fn marker_and_expect_finish_early() {
        let mut r = rules();
        r.marker = Some("DONE".into());
        let mut o = obs(3, 0);
        o.marker = true;
        assert_eq!(decide(&r, &o), Verdict::Finished(Trigger::Marker));
        let mut r = rules();
        r.expect = Some(3);
        assert_eq!(decide(&r, &obs(3, 0)), Verdict::Finished(Trigger::Expected));
        assert!(matches!(decide(&r, &obs(2, 0)), Verdict::Waiting { .. }));
    }

    #[test]
    fn quiet_time_never_finishes_a_counted_or_marked_stack() {
        // sections a minute apart, settle 30 s: 5 of 12 after an hour's quiet still waits
        let mut r = rules();
        r.expect = Some(12);
        assert!(matches!(decide(&r, &obs(5, 60)), Verdict::Waiting { .. }));
        let mut m = rules();
        m.marker = Some("DONE".into());
        match decide(&m, &obs(5, 600)) {
            Verdict::Waiting { why, overdue } => {
                assert!(why.contains("when DONE appears"), "{why}");
                assert!(!overdue);
            }
            v => panic!("{v:?}"),
        }
        // past max_wait it is overdue, and says so
        let mut o = obs(5, 600);
        o.seen_for = Duration::from_secs(4000);
        match decide(&r, &o) {
            Verdict::Waiting { why, overdue } => {
                assert!(
                    overdue && why.contains("max_wait") && why.contains("5 of 12"),
                    "{why}"
                )
            }
            v => panic!("{v:?}"),
        }
        // finish_after, when set, finishes it after that much quiet, and says why
        r.finish_after = Some(Duration::from_secs(1800));
        assert!(matches!(decide(&r, &obs(5, 600)), Verdict::Waiting { .. }));
        assert_eq!(
            decide(&r, &obs(5, 1800)),
            Verdict::Finished(Trigger::QuietTooLong)
        );
    }

    #[test]
    fn a_one_image_stack_is_held_with_the_reason() {
        match decide(&rules(), &obs(1, 31)) {
            Verdict::Held(m) => assert!(
                m.contains("only 1 image") && m.contains("min_images"),
                "{m}"
            ),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn broken_files_hold_the_stack_by_name() {
        let mut o = obs(4, 40);
        o.invalid = vec![(
            "S_0004.tif".into(),
            "truncated: strip 12 ends at byte 9 437 184, file has 5 000 000".into(),
        )];
        match decide(&rules(), &o) {
            Verdict::Held(m) => assert!(m.starts_with("S_0004.tif: truncated: strip 12"), "{m}"),
            v => panic!("{v:?}"),
        }
        // before settle a broken file is just "not yet whole"
        let mut r = rules();
        r.expect = Some(4);
        o.quiet_for = Duration::from_secs(1);
        assert!(matches!(decide(&r, &o), Verdict::Waiting { .. }));
    }

    proptest! {
        /// Whatever was observed, a stack with a broken image or too few images is never sent,
        /// and a counted or marked stack is never finished by quiet time alone.
        #[test]
        fn never_finished_when_broken_short_or_uncounted(
            images in 0u32..10, quiet in 0u64..100, marker: bool, use_marker: bool,
            expect in proptest::option::of(1u32..10), broken: bool, min in 1u32..5,
        ) {
            let r = Rules {
                min_images: min,
                marker: use_marker.then(|| "M".to_string()),
                expect,
                settle: Duration::from_secs(30),
                max_wait: Duration::from_secs(60),
                finish_after: None,
            };
            let mut o = obs(images, quiet);
            o.marker = marker;
            if broken { o.invalid.push(("x.tif".into(), "truncated".into())); }
            let v = decide(&r, &o);
            if broken || images < min {
                prop_assert!(!matches!(v, Verdict::Finished(_)));
            }
            let fired = (use_marker && marker) || expect.is_some_and(|n| images >= n);
            if r.counted() && !fired {
                prop_assert!(!matches!(v, Verdict::Finished(_)), "{v:?}");
            }
            // and a whole, big-enough stack whose trigger fired is always sent
            let trigger = if r.counted() { fired } else { quiet >= 30 };
            if !broken && images >= min && trigger {
                prop_assert!(matches!(v, Verdict::Finished(_)), "{v:?}");
            }
        }
    }
}
