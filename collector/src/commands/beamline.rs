//! What the agent asks over its link: `outcome` (where its stacks' DAGs are), `results`
//! (the files a workflow returns, listed or streamed) and `abandon` (a stack it gave up on).

use crate::api::Client;
use beamflow_config::Config;
use beamflow_program::{sayln, Exit};
use std::path::PathBuf;

/// `outcome`'s arguments.
#[derive(Debug, clap::Args)]
pub struct OutcomeArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Machine-readable output (one JSON list).
    #[arg(long)]
    pub json: bool,
    /// The asking beamline (its agent passes its name: the status page's activity light).
    #[arg(long)]
    pub beamline: Option<String>,
    /// Stack version ids (the REMOTE column of the agent's status).
    #[arg(required = true)]
    pub ids: Vec<u64>,
}

/// `outcome`: each stack version's DAG in one word.
pub fn outcome_main(a: OutcomeArgs) -> anyhow::Result<Exit> {
    let cfg = Config::load(&a.config)?;
    let outcomes = Client::from_state_dir(&cfg.collector.state_dir)?
        .outcomes(&a.ids, a.beamline.as_deref())?;
    if a.json {
        sayln!("{}", serde_json::to_string(&outcomes)?);
    } else {
        for o in &outcomes {
            sayln!("{}  {}", o.id, o.line());
        }
    }
    Ok(Exit::Done)
}

/// `results`' arguments.
#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
    /// Machine-readable listing (one JSON list).
    #[arg(long)]
    pub json: bool,
    /// Stream this result file (a path the listing names) to stdout.
    #[arg(long)]
    pub cat: Option<String>,
    /// The stack version id.
    pub id: u64,
}

/// `results`: the returned files with their BLAKE3, or one of them streamed.
pub fn results_main(a: ResultsArgs) -> anyhow::Result<Exit> {
    let cfg = Config::load(&a.config)?;
    match a.cat {
        Some(path) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            crate::results::cat(&cfg, a.id, &path, &mut out)?;
        }
        None => {
            let files = crate::results::list(&cfg, a.id)?;
            if a.json {
                sayln!("{}", serde_json::to_string(&files)?);
            } else {
                for f in &files {
                    sayln!("{}  {}  {}", f.blake3, f.size, f.path);
                }
            }
        }
    }
    Ok(Exit::Done)
}

/// `abandon`'s arguments.
#[derive(Debug, clap::Args)]
pub struct AbandonArgs {
    /// The config file.
    #[arg(long, env = "BEAMFLOW_CONFIG")]
    pub config: PathBuf,
}

/// The most an abandonment's request may be: a beamline, a stack's path and a reason.
const ABANDON_LIMIT: u64 = 64 << 10;

/// `abandon`: the request (`AbandonRequest` as one JSON document) from stdin, the answer
/// (`AbandonResponse`) as one JSON line.
pub fn abandon_main(a: AbandonArgs) -> anyhow::Result<Exit> {
    use anyhow::Context;
    use std::io::Read;
    let cfg = Config::load(&a.config)?;
    let mut text = Vec::new();
    std::io::stdin()
        .take(ABANDON_LIMIT + 1)
        .read_to_end(&mut text)
        .context("cannot read the request from stdin")?;
    anyhow::ensure!(
        text.len() as u64 <= ABANDON_LIMIT,
        "the request on stdin is over {ABANDON_LIMIT} bytes: send one AbandonRequest as JSON"
    );
    let req: crate::api::AbandonRequest = serde_json::from_slice(&text).context(
        "stdin is not an AbandonRequest: send {\"beamline\": …, \"stack\": …, \"why\": …} as JSON",
    )?;
    let answer = Client::from_state_dir(&cfg.collector.state_dir)?.abandon(&req)?;
    sayln!("{}", serde_json::to_string(&answer)?);
    Ok(Exit::Done)
}
