//! When is a folder of images a finished stack? The rules of DESIGN.md as a pure function of
//! what was observed, so they can be tested exhaustively without clocks or files.
//!
//! A stack is finished when it holds at least `min_images`, a trigger fired (marker present,
//! expected count reached, or nothing changed for `settle`), and every image passed the
//! structural TIFF check. Images still failing the check once the folder has been quiet for
//! `settle` hold the stack with their names and faults; it is never sent half-broken.

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
}

/// What fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The marker file appeared.
    Marker,
    /// The expected count was reached.
    Expected,
    /// Nothing changed for `settle`.
    Settled,
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
    let overdue = o.seen_for >= r.max_wait && !settled;
    let trigger = if r.marker.is_some() && o.marker {
        Some(Trigger::Marker)
    } else if r.expect.is_some_and(|n| o.images >= n) {
        Some(Trigger::Expected)
    } else if settled {
        Some(Trigger::Settled)
    } else {
        None
    };
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
        let mut why = format!(
            "{} images; finished after {} without changes",
            o.images,
            humantime::format_duration(r.settle)
        );
        if let Some(n) = r.expect {
            why = format!(
                "{} of {n} images; finished at {n} or after {} without changes",
                o.images,
                humantime::format_duration(r.settle)
            );
        }
        if overdue {
            why = format!(
                "still changing after {} (max_wait); {why}",
                humantime::format_duration(r.max_wait)
            );
        }
        return Verdict::Waiting { why, overdue };
    };
    if o.invalid.is_empty() {
        return Verdict::Finished(t);
    }
    if settled {
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
        }
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
        /// Whatever was observed, a stack with a broken image or too few images is never sent.
        #[test]
        fn never_finished_when_broken_or_short(
            images in 0u32..10, quiet in 0u64..100, marker: bool, expect in proptest::option::of(1u32..10),
            broken: bool, min in 1u32..5,
        ) {
            let r = Rules { min_images: min, marker: Some("M".into()), expect, settle: Duration::from_secs(30), max_wait: Duration::from_secs(60) };
            let mut o = obs(images, quiet);
            o.marker = marker;
            if broken { o.invalid.push(("x.tif".into(), "truncated".into())); }
            let v = decide(&r, &o);
            if broken || images < min {
                prop_assert!(!matches!(v, Verdict::Finished(_)));
            }
            // and a quiet, whole, big-enough stack is always sent
            if !broken && images >= min && quiet >= 30 {
                prop_assert!(matches!(v, Verdict::Finished(_)));
            }
        }
    }
}
