//! `beamflow-collector qa DIR`: the first step of every AlignTK workflow, on a compute node.

use crate::science::{names, qa, to8bit};
use anyhow::Context;
use beamflow_program::{complain, sayln, Exit, Verdict};
use std::path::PathBuf;

/// `qa`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of images.
    pub dir: PathBuf,
    /// Where to write the report.
    #[arg(long, default_value = qa::QA_FILE)]
    pub out: PathBuf,
    /// The work folder's `names.tsv`: report sections by their received names rather than
    /// the names AlignTK reads them by.
    #[arg(long)]
    pub names: Option<PathBuf>,
}

/// Checks every section and writes the report; a section that fails holds the stack (exit 3).
pub fn main(a: Args) -> anyhow::Result<Exit> {
    let (table, conversion) = match &a.names {
        Some(p) => {
            let table = names::read_names(p)
                .with_context(|| format!("cannot read the names table {}", p.display()))?;
            // preparation's record of conversions sits beside the names table
            let record = p.with_file_name(to8bit::CONVERSION_FILE);
            let conversion = std::fs::read_to_string(&record)
                .ok()
                .and_then(|t| serde_json::from_str::<to8bit::Conversion>(&t).ok());
            (table, conversion)
        }
        None => (Vec::new(), None),
    };
    let report = qa::check_dir(&a.dir, &table, conversion.as_ref())?;
    std::fs::write(&a.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    if !report.bad.is_empty() {
        for (f, why) in &report.bad {
            complain!("{f}: {why}");
        }
        return Err(Verdict::new(
            Exit::Held,
            format!(
                "{} of {} sections failed the quality check (details in {})",
                report.bad.len(),
                report.bad.len() + report.sections.len(),
                a.out.display()
            ),
        )
        .into());
    }
    sayln!(
        "{} sections passed the quality check ({})",
        report.sections.len(),
        a.out.display()
    );
    Ok(Exit::Done)
}
