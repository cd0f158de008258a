//! Job states, named as HPC users know them from Balsam.

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Every change is an event row with a time and a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Just recorded.
    Created,
    /// Waits for its parents to finish.
    AwaitingParents,
    /// Parents done; may be preprocessed and run.
    Ready,
    /// Work folder prepared; waits for a launcher.
    Preprocessed,
    /// A launcher runs it.
    Running,
    /// Exited 0.
    RunDone,
    /// Outputs checked.
    Postprocessed,
    /// Done for good.
    JobFinished,
    /// Exited non-zero or failed its output check.
    RunError,
    /// Its allocation ended or vanished while it ran.
    RunTimeout,
    /// Will run again.
    RestartReady,
    /// Out of attempts: held for a person.
    Failed,
    /// A person stopped it.
    UserKilled,
}

impl JobState {
    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "CREATED",
            JobState::AwaitingParents => "AWAITING_PARENTS",
            JobState::Ready => "READY",
            JobState::Preprocessed => "PREPROCESSED",
            JobState::Running => "RUNNING",
            JobState::RunDone => "RUN_DONE",
            JobState::Postprocessed => "POSTPROCESSED",
            JobState::JobFinished => "JOB_FINISHED",
            JobState::RunError => "RUN_ERROR",
            JobState::RunTimeout => "RUN_TIMEOUT",
            JobState::RestartReady => "RESTART_READY",
            JobState::Failed => "FAILED",
            JobState::UserKilled => "USER_KILLED",
        }
    }
}
