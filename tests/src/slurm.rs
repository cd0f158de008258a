//! The private three-node Slurm of the tests and benchmarks (tests/slurm/start.sh).

use std::path::Path;
use std::process::Command;

/// Starts (or reuses) the test cluster and returns its SLURM_CONF. Fails, never skips: the test
/// command installs Slurm, so a missing one is a broken setup.
pub fn cluster() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm/start.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run tests/slurm/start.sh");
    assert!(
        out.status.success(),
        "a three-node Slurm could not be started (tests/run.sh installs slurm-wlm and munge):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
