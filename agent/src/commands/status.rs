//! `beamflow-agent status`: what the agent knows, for people (a table) and scripts (JSON).

use crate::journal::StackRecord;

/// Human-readable size ("1.5 GiB").
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The status table: one line per stack, reason last because it is the long one.
pub fn table(stacks: &[StackRecord]) -> String {
    if stacks.is_empty() {
        return "no stacks seen yet\n".into();
    }
    let mut rows: Vec<[String; 9]> = vec![[
        "STACK", "VER", "STATE", "FILES", "BYTES", "SENT", "REMOTE", "DAG", "REASON",
    ]
    .map(String::from)];
    for s in stacks {
        rows.push([
            s.name.clone(),
            s.version.to_string(),
            s.state.as_str().to_string(),
            s.files.to_string(),
            human_bytes(s.bytes),
            human_bytes(s.bytes_sent),
            s.remote_id
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            // where the collector's DAG is, once the daemon asked over the link (or what
            // became of a streamed stack's work when it passed max_wait)
            if matches!(
                s.state,
                crate::journal::StackState::Submitted | crate::journal::StackState::Waiting
            ) && !s.outcome.is_empty()
            {
                if s.results.is_empty() {
                    s.outcome.clone()
                } else {
                    format!("{}; {}", s.outcome, s.results)
                }
            } else {
                "-".into()
            },
            if s.reason.is_empty() {
                "-".into()
            } else {
                s.reason.clone()
            },
        ]);
    }
    beamflow_protocol::table(&rows)
}

/// `beamflow-agent status`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: std::path::PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `beamflow-agent status`: whether the daemon runs, and every stack the journal knows.
pub fn main(args: Args) -> anyhow::Result<beamflow_program::Exit> {
    use beamflow_program::sayln;
    let cfg = beamflow_config::Config::load(&args.config)?;
    let journal = crate::journal::Journal::open_read_only(&cfg.agent.state_dir)?;
    let stacks = journal.stacks()?;
    if args.json {
        sayln!("{}", serde_json::to_string_pretty(&stacks)?);
        return Ok(beamflow_program::Exit::Done);
    }
    match crate::instance::running(&cfg.agent.state_dir) {
        Some(pid) => sayln!("daemon: running (pid {pid})"),
        None => sayln!(
            "daemon: not running; start it with `systemctl start beamflow-agent` or `beamflow-agent run --config {}`",
            args.config.display()
        ),
    }
    beamflow_program::logs::out(&table(&stacks));
    Ok(beamflow_program::Exit::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
