//! Shell completions and the manual page, generated from a program's argument definitions so
//! they can never disagree with them.

use crate::Exit;

/// `completions`' argument.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Prints completions for `shell` to stdout.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> anyhow::Result<Exit> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
    Ok(Exit::Done)
}

/// Prints the manual page (roff) to stdout.
pub fn man(cmd: clap::Command) -> anyhow::Result<Exit> {
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(Exit::Done)
}
