//! Why a job failed, sorted once: data faults are held at once for a person, run faults are
//! retried while attempts remain.
//!
//! Running a job again cannot fix a section AlignTK cannot read or a stack `qa` refused; it
//! only spends allocations and hides the reason under two more attempts. A signal, a full
//! disk or a node that went away may well pass. The table below is the one place that
//! decides which is which; the service applies it to every report.

/// What went wrong with one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The built-in `qa` step refused the stack.
    QaFailed,
    /// A tool said the input's format is one it cannot use (AlignTK reads 8-bit only).
    UnsupportedFormat,
    /// A tool could not read an input (an image, a map, a mask).
    CannotReadInput,
    /// The program could not be started at all.
    MissingProgram,
    /// Killed by a signal other than abort (out of memory, a node failure, a crash).
    Signal,
    /// A tool could not allocate memory or write its output: the node or the disk.
    Resources,
    /// A non-zero exit with nothing recognisable in stderr.
    Exit,
}

/// What the service does about a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Held as FAILED for a person: the data is at fault, not the run.
    Hold,
    /// Run again while attempts remain.
    Retry,
}

/// Recognised lines of a tool's stderr, first match wins: (text, fault).
const STDERR: &[(&str, Fault)] = &[
    (
        "unsupported number of bits per sample",
        Fault::UnsupportedFormat,
    ),
    ("Could not read image", Fault::CannotReadInput),
    ("Could not read mask", Fault::CannotReadInput),
    ("Could not read map", Fault::CannotReadInput),
    ("Could not open TIFF image", Fault::CannotReadInput),
    ("for reading", Fault::CannotReadInput),
    ("Read error on input strip", Fault::CannotReadInput),
    ("Cannot find image file", Fault::CannotReadInput),
    ("Could not allocate", Fault::Resources),
    ("Could not write", Fault::Resources),
    ("No space left on device", Fault::Resources),
];

impl Fault {
    /// Held or retried.
    pub fn handling(self) -> Handling {
        match self {
            Fault::QaFailed
            | Fault::UnsupportedFormat
            | Fault::CannotReadInput
            | Fault::MissingProgram => Handling::Hold,
            Fault::Signal | Fault::Resources | Fault::Exit => Handling::Retry,
        }
    }

    /// A few words for the job's reason.
    pub fn what(self) -> &'static str {
        match self {
            Fault::QaFailed => "the quality check refused the stack",
            Fault::UnsupportedFormat => "a section's format cannot be used",
            Fault::CannotReadInput => "an input could not be read",
            Fault::MissingProgram => "the program could not be started",
            Fault::Signal => "killed by a signal",
            Fault::Resources => "out of memory or disk",
            Fault::Exit => "exited with an error",
        }
    }
}

/// Sorts one failed run: its program's arguments, its exit code (128 + signal for a signal,
/// as shells count) and what it wrote to stderr.
pub fn classify(argv: &[String], exit_code: Option<i32>, stderr: &str) -> Fault {
    if let Some((_, f)) = STDERR.iter().find(|(text, _)| stderr.contains(text)) {
        return *f;
    }
    let is_qa = argv.get(1).is_some_and(|a| a == "qa");
    match exit_code {
        // 3 is beamflow's "held: needs a person"; 1 any other error of the step
        Some(1 | 3) if is_qa => Fault::QaFailed,
        Some(126 | 127) => Fault::MissingProgram,
        // abort() is how AlignTK reports any runtime error it did not name above
        Some(134) => Fault::Exit,
        Some(c) if c > 128 => Fault::Signal,
        None => Fault::Signal,
        _ => Fault::Exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn data_faults_are_held_and_run_faults_retried() {
        let find_rst = v(&["find_rst", "-pairs", "pairs.lst"]);
        let qa = v(&["/usr/bin/beamflow-collector", "qa", "images"]);
        let cases = [
            (
                &find_rst,
                Some(134),
                "Either undefined or unsupported number of bits per sample (bps = 16) in tiff image images/a.tif\n[vm:1] *** Process received signal ***",
                Fault::UnsupportedFormat,
                Handling::Hold,
            ),
            (&find_rst, Some(134), "Could not read image images/x.tif", Fault::CannotReadInput, Handling::Hold),
            (&find_rst, Some(134), "Could not read map maps/a_b.map", Fault::CannotReadInput, Handling::Hold),
            (&qa, Some(3), "S_0002.tif: blank: every pixel is 16", Fault::QaFailed, Handling::Hold),
            (&qa, Some(1), "cannot list images", Fault::QaFailed, Handling::Hold),
            (&find_rst, Some(127), "", Fault::MissingProgram, Handling::Hold),
            (&find_rst, Some(137), "", Fault::Signal, Handling::Retry),
            (&find_rst, None, "", Fault::Signal, Handling::Retry),
            (&find_rst, Some(134), "Could not allocate image arrays (99)", Fault::Resources, Handling::Retry),
            (&find_rst, Some(134), "", Fault::Exit, Handling::Retry),
            (&find_rst, Some(1), "usage", Fault::Exit, Handling::Retry),
        ];
        for (argv, code, stderr, fault, handling) in cases {
            let got = classify(argv, code, stderr);
            assert_eq!(got, fault, "{argv:?} {code:?} {stderr:?}");
            assert_eq!(got.handling(), handling, "{got:?}");
        }
    }
}
