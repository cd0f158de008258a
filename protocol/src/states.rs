//! One source for every lifecycle state's name.
//!
//! A state is named once, where its enum is declared with [`states!`]: the database, the wire,
//! the status page and the CLI all take the name from there, and reading a name back is
//! strict: an unknown name is an error that says what was expected, never a default.

/// A name that is no state of its kind (a database or a peer from another version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is no {kind} state (expected one of {expected}); the database or the peer may be from another beamflow version")]
pub struct UnknownState {
    /// The kind of state (`JobState` …).
    pub kind: &'static str,
    /// The name read.
    pub name: String,
    /// The names that exist.
    pub expected: String,
}

/// Declares a lifecycle's states with their one name each: the enum, `ALL` in lifecycle
/// order, `as_str`, `parse` (strict), `Display`, `FromStr` and serde (as the name, strict).
#[macro_export]
macro_rules! states {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every state, in the order of the lifecycle.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The state's one name: in the database, on the wire, on the page, in the CLI.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The state a name stands for; an unknown name is an error saying what exists.
            pub fn parse(s: &str) -> ::std::result::Result<$name, $crate::states::UnknownState> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|st| st.as_str() == s)
                    .ok_or_else(|| $crate::states::UnknownState {
                        kind: stringify!($name),
                        name: s.to_string(),
                        expected: Self::ALL
                            .iter()
                            .map(|st| st.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::states::UnknownState;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                Self::parse(&s).map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::states! {
        /// A test lifecycle.
        pub enum Light {
            /// Stop.
            Red = "RED",
            /// Go.
            Green = "GREEN",
        }
    }

    #[test]
    fn a_state_has_one_name_everywhere_and_an_unknown_one_is_an_error() {
        for s in Light::ALL {
            assert_eq!(Light::parse(s.as_str()), Ok(*s));
            assert_eq!(s.to_string(), s.as_str());
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Light>(&json).unwrap(), *s);
        }
        let e = Light::parse("AMBER").unwrap_err();
        assert!(e.to_string().contains("expected one of RED, GREEN"), "{e}");
        assert!(serde_json::from_str::<Light>("\"AMBER\"").is_err());
    }
}

states! {
    /// Where a job is in its life (named as HPC users know them from Balsam). Every change
    /// is an event row with a time and a reason; the legal moves are the collector's table.
    pub enum JobState {
        /// Just recorded.
        Created = "CREATED",
        /// Waits for its parents to finish.
        AwaitingParents = "AWAITING_PARENTS",
        /// Parents done; may be preprocessed and run.
        Ready = "READY",
        /// Work folder prepared; waits for a launcher.
        Preprocessed = "PREPROCESSED",
        /// A launcher runs it.
        Running = "RUNNING",
        /// Exited 0.
        RunDone = "RUN_DONE",
        /// Outputs checked.
        Postprocessed = "POSTPROCESSED",
        /// Done for good.
        JobFinished = "JOB_FINISHED",
        /// Exited non-zero or failed its output check.
        RunError = "RUN_ERROR",
        /// Its allocation ended or vanished while it ran.
        RunTimeout = "RUN_TIMEOUT",
        /// Will run again.
        RestartReady = "RESTART_READY",
        /// Out of attempts, or the data is at fault: held for a person.
        Failed = "FAILED",
        /// A person stopped it.
        UserKilled = "USER_KILLED",
        /// A newer version of its stack was accepted before it started: it never runs.
        Superseded = "SUPERSEDED",
    }
}

impl JobState {
    /// Whether a launcher may be handed the job.
    pub fn runnable(self) -> bool {
        matches!(self, JobState::Preprocessed | JobState::RestartReady)
    }
}

states! {
    /// Where a launcher (one batch allocation) is in its life.
    pub enum LauncherState {
        /// Submitted to the batch scheduler; its allocation has not started.
        Queued = "QUEUED",
        /// Its allocation runs it and it asks for work.
        Running = "RUNNING",
        /// It is ending (cancelled, out of wall time, idle) and takes no more work; its last
        /// jobs are being ended and reported.
        Ending = "ENDING",
        /// It exited, or its batch job ended.
        Finished = "FINISHED",
        /// It fell silent, or its queue was removed: declared gone.
        Lost = "LOST",
    }
}

impl LauncherState {
    /// Whether it may still run jobs.
    pub fn live(self) -> bool {
        matches!(
            self,
            LauncherState::Queued | LauncherState::Running | LauncherState::Ending
        )
    }

    /// Whether it speaks to the service, so that its silence means it is gone.
    pub fn heard(self) -> bool {
        matches!(self, LauncherState::Running | LauncherState::Ending)
    }
}

states! {
    /// Where a stack version's DAG is, as the beamline is told: one word for all its jobs.
    pub enum DagState {
        /// No job has started.
        Waiting = "waiting",
        /// Jobs are running or ready.
        Running = "running",
        /// Every job finished.
        Done = "done",
        /// A job is held for a person.
        Failed = "failed",
        /// A person stopped what had not finished.
        Killed = "killed",
        /// A newer version took over what had not started.
        Superseded = "superseded",
        /// The collector has no such stack version.
        Unknown = "unknown",
    }
}
