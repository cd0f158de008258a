//! News for people: a stack held, a DAG FAILED or done, the link down too long, a watch root
//! silent during its active hours, sent to every `[[notify]]` target that wants it (a webhook
//! with a Slack-compatible `text`, a mail command). One message per stack and event: the
//! daemon journals each message's key before it is sent, so neither a repeated question nor
//! a restart sends it twice. Delivery runs in tasks of its own, each target retried with
//! backoff, so a slow or dead receiver never holds up the daemon.

use beamflow_config::notify::{NotifyEvent, NotifySection};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// One piece of news.
#[derive(Debug, Clone, serde::Serialize)]
pub struct News {
    /// What happened.
    pub event: NotifyEvent,
    /// The beamline it concerns.
    pub beamline: String,
    /// The stack, if it is about one.
    pub stack: Option<String>,
    /// A short line (a mail's subject).
    pub subject: String,
    /// The message, for people; a webhook carries it as `text`.
    pub text: String,
}

/// How many times a target is tried, and the longest wait between tries.
const ATTEMPTS: u32 = 8;
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Hands news to the delivery tasks; cheap to clone and never blocks.
#[derive(Clone)]
pub struct Post {
    targets: Arc<Vec<NotifySection>>,
    first_wait: Duration,
}

impl Post {
    /// Posting to `targets`, retrying from `first_wait` (doubling up to five minutes).
    pub fn new(targets: Vec<NotifySection>, first_wait: Duration) -> Post {
        Post {
            targets: Arc::new(targets),
            first_wait,
        }
    }

    /// Whether any target wants `event` (so the daemon need not even compose it).
    pub fn wanted(&self, event: NotifyEvent) -> bool {
        self.targets.iter().any(|t| t.wants(event))
    }

    /// Sends `news` to every target that wants it, each in a task of its own. Control
    /// characters (a stack name may hold a newline) are escaped first, in the subject and
    /// the body alike: a mailer takes a newline in a subject for the end of a header.
    pub fn send(&self, mut news: News) {
        news.subject = escape_controls(&news.subject);
        news.text = escape_controls(&news.text);
        news.stack = news.stack.as_deref().map(escape_controls);

        for (i, t) in self.targets.iter().enumerate() {
            if !t.wants(news.event) {
                continue;
            }
            let (t, news, first) = (t.clone(), news.clone(), self.first_wait);
            tokio::spawn(async move {
                let mut wait = first;
                for attempt in 1..=ATTEMPTS {
                    let (t2, n2) = (t.clone(), news.clone());
                    let r = tokio::task::spawn_blocking(move || deliver(&t2, &n2))
                        .await
                        .unwrap_or_else(|e| Err(DeliveryError::Task(e.to_string())))
                        .map_err(|e| beamflow_program::chain(&e));
                    match r {
                        Ok(()) => {
                            tracing::info!(target_index = i, event = ?news.event, "notification sent");
                            return;
                        }
                        Err(e) if attempt == ATTEMPTS => {
                            tracing::warn!(target_index = i, event = ?news.event, "notification not delivered after {ATTEMPTS} attempts: {e}");
                        }
                        Err(e) => {
                            tracing::debug!(
                                target_index = i,
                                attempt,
                                "notification not delivered yet: {e}"
                            );
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(MAX_WAIT);
                        }
                    }
                }
            });
        }
    }
}

/// `s` with every control character written out (`\n`, `\u{1b}`) and a backslash doubled,
/// as names that are not UTF-8 are shown ([`crate::stack::scan::escaped`]): no name can start a
/// header, a line or a terminal sequence in what people read, and two texts stay two.
pub fn escape_controls(s: &str) -> String {
    crate::stack::scan::escaped(std::ffi::OsStr::new(s))
}

/// Why one delivery failed; it is tried again a few times.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The webhook could not be reached.
    #[error("{url}")]
    Post {
        /// The webhook.
        url: String,
        /// What the HTTP client said.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The webhook answered other than 2xx.
    #[error("{url} answered {code}")]
    Status {
        /// The webhook.
        url: String,
        /// Its HTTP status.
        code: u16,
    },
    /// The command could not be run or waited for.
    #[error("cannot run {program}")]
    Run {
        /// The program.
        program: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("{program} exited {status}: {said}")]
    Exit {
        /// The program.
        program: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it wrote on stderr.
        said: String,
    },
    /// The delivery thread itself failed.
    #[error("the delivery task failed: {0}")]
    Task(String),
}

/// One delivery to one target: the webhook, then the command.
fn deliver(t: &NotifySection, news: &News) -> Result<(), DeliveryError> {
    if !t.url.is_empty() {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(15)))
            .http_status_as_error(false)
            .build()
            .into();
        let body = serde_json::json!({
            "text": news.text,
            "event": news.event,
            "beamline": news.beamline,
            "stack": news.stack,
            "subject": news.subject,
        });
        let res = agent
            .post(&t.url)
            .send_json(&body)
            .map_err(|e| DeliveryError::Post {
                url: t.url.clone(),
                source: Box::new(e),
            })?;
        let code = res.status().as_u16();
        if !(200..300).contains(&code) {
            return Err(DeliveryError::Status {
                url: t.url.clone(),
                code,
            });
        }
    }
    if !t.argv.is_empty() {
        let argv = beamflow_config::argv::fill_all(&t.argv, &|k| {
            (k == "subject").then(|| news.subject.clone())
        });
        // a script reads these as data; the config keeps {subject} out of any script
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("BEAMFLOW_SUBJECT", &news.subject)
            .env("BEAMFLOW_STACK", news.stack.as_deref().unwrap_or(""))
            .env("BEAMFLOW_BEAMLINE", &news.beamline)
            .env("BEAMFLOW_EVENT", format!("{:?}", news.event).to_lowercase())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(run(&argv[0]))?;
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(news.text.as_bytes());
        }
        let out = child.wait_with_output().map_err(run(&argv[0]))?;
        if !out.status.success() {
            return Err(DeliveryError::Exit {
                program: argv[0].clone(),
                status: out.status,
                said: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

fn run(program: &str) -> impl FnOnce(std::io::Error) -> DeliveryError {
    let program = program.to_string();
    move |source| DeliveryError::Run { program, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_a_subject_or_a_body() {
        let name = "s\nBcc: all@site.org\r\n\u{1b}[2J\u{85}x\\n";
        let e = escape_controls(&format!("beamflow: bl/{name} held"));
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert_eq!(
            e,
            "beamflow: bl/s\\nBcc: all@site.org\\r\\n\\u{1b}[2J\\u{85}x\\\\n held"
        );
        // two different names stay two different texts
        assert_ne!(escape_controls("a\nb"), escape_controls("a\\nb"));
        assert_eq!(escape_controls("plain ä"), "plain ä");
    }
}
