//! `beamflow-collector preview [WORK]`: the last step of the AlignTK workflow that writes aligned
//! sections, on a compute node: the picture a scientist looks at first.

use crate::science::preview;
use beamflow_program::{sayln, Exit};
use std::path::PathBuf;

/// `preview`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stack version's work folder (`images.lst`, `images/`, `aligned/`).
    #[arg(default_value = ".")]
    pub work: PathBuf,
    /// Where to write the picture.
    #[arg(long, default_value = preview::PREVIEW_FILE)]
    pub out: PathBuf,
}

/// Writes the preview: the reslice before and after alignment, and three aligned sections.
pub fn main(a: Args) -> anyhow::Result<Exit> {
    let p = preview::write(&a.work, &a.out)?;
    sayln!(
        "{}: {}x{} px, {} sections resliced before and after alignment",
        a.out.display(),
        p.width,
        p.height,
        p.sections
    );
    Ok(Exit::Done)
}
