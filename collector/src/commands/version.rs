//! `beamflow-collector version`: this build, the protocol it speaks and the BLAKE3 of its own
//! executable (what `beamflow-agent setup` compares with the binary it would install).

use anyhow::Context;
use beamflow_program::{sayln, Exit};
use std::path::Path;

/// `version`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Prints the version, protocol, path and BLAKE3 of this executable.
pub fn main(a: Args) -> anyhow::Result<Exit> {
    let me = std::env::current_exe().context("cannot find this program's file")?;
    let hash = blake3_of(&me)?;
    if a.json {
        sayln!(
            "{}",
            serde_json::json!({
                "program": "beamflow-collector",
                "version": env!("CARGO_PKG_VERSION"),
                "commit": beamflow_protocol::COMMIT,
                "protocol": beamflow_protocol::VERSION,
                "path": me.display().to_string(),
                "blake3": hash,
            })
        );
    } else {
        sayln!(
            "beamflow-collector {} (protocol {}) at {}, blake3 {hash}",
            beamflow_protocol::VERSION_AND_COMMIT,
            beamflow_protocol::VERSION,
            me.display()
        );
    }
    Ok(Exit::Done)
}

/// BLAKE3 of a file, read in chunks.
fn blake3_of(path: &Path) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    h.update_reader(f)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}
