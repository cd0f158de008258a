//! `[[notify]]`: where the beamline's news goes (a webhook with a Slack-compatible `text`, a
//! mail command, or both) and which news.

use crate::units::Dur;
use serde::{Deserialize, Serialize};

/// What a person may want to hear about.
#[derive(
    Debug,
    Clone,
    Copy,
    Deserialize,
    Serialize,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A stack is held (a broken file, a refusal): it will not go until someone acts.
    Held,
    /// A stack's DAG has a FAILED job, held for a person.
    Failed,
    /// A stack's DAG finished (off by default: one message per stack can be a lot).
    Done,
    /// The link (the SSH master) has been down longer than `link_down_after`.
    LinkDown,
    /// A watch root received nothing for its `alarm_after` during its active hours.
    Silent,
}

/// One `[[notify]]` target.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// A webhook URL: a JSON POST whose `text` Slack, Mattermost and Teams show as it is.
    #[serde(default)]
    pub url: String,
    /// A mail command, as an argument vector (no shell): the subject replaces `{subject}`
    /// and the message goes to its stdin, e.g. `mail -s {subject} ops@site.org`.
    #[serde(default)]
    pub command: String,
    /// The command split into its words (done when the config loads).
    #[serde(skip)]
    pub argv: Vec<String>,
    /// Which news (default: held, failed, link_down, silent; `done` only when asked for).
    #[serde(default = "default_events")]
    pub events: Vec<NotifyEvent>,
    /// How long the link must be down before `link_down` is sent.
    #[serde(default = "default_link_down_after")]
    pub link_down_after: Dur,
}

fn default_events() -> Vec<NotifyEvent> {
    vec![
        NotifyEvent::Held,
        NotifyEvent::Failed,
        NotifyEvent::LinkDown,
        NotifyEvent::Silent,
    ]
}

fn default_link_down_after() -> Dur {
    Dur::secs(600)
}

impl NotifySection {
    /// Checks the section, splitting the command: an error names the key.
    pub fn validate(&mut self) -> Result<(), (String, String)> {
        if self.url.is_empty() && self.command.is_empty() {
            return Err((
                "url".into(),
                "a [[notify]] needs a url (a webhook) or a command (e.g. \"mail -s {subject} ops@site.org\")".into(),
            ));
        }
        let web = self.url.starts_with("https://") || self.url.starts_with("http://");
        if !self.url.is_empty() && !web {
            return Err((
                "url".into(),
                format!("\"{}\" is not an http(s) URL", self.url),
            ));
        }
        if !self.command.is_empty() {
            self.argv =
                crate::argv::split(&self.command).map_err(|e| ("command".into(), e.to_string()))?;
            crate::argv::check_names(
                &self.argv,
                &["subject"],
                "\"$BEAMFLOW_SUBJECT\", \"$BEAMFLOW_STACK\"",
            )
            .map_err(|e| ("command".into(), e.to_string()))?;
        }
        Ok(())
    }

    /// Whether this target wants `event`.
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.contains(&event)
    }
}

/// Why written active hours were refused.
#[derive(Debug, thiserror::Error)]
pub enum HoursError {
    /// Not two times joined by `-`.
    #[error("\"{0}\": write it like \"08:00-20:00\"")]
    Span(String),
    /// One end is not written HH:MM.
    #[error("\"{0}\" is not HH:MM")]
    Form(String),
    /// One end is past 24:00.
    #[error("\"{0}\" is not a time of day")]
    Time(String),
}

/// Active hours of a watch root, `"08:00-20:00"` in the host's local time (a span may pass
/// midnight: `"22:00-06:00"`); empty means all day.
pub fn parse_hours(s: &str) -> Result<Option<(u32, u32)>, HoursError> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    let minutes = |t: &str| -> Result<u32, HoursError> {
        let form = || HoursError::Form(t.to_string());
        let (h, m) = t.trim().split_once(':').ok_or_else(form)?;
        let (h, m): (u32, u32) = (
            h.parse().map_err(|_| form())?,
            m.parse().map_err(|_| form())?,
        );
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(HoursError::Time(t.to_string()));
        }
        Ok(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| HoursError::Span(s.to_string()))?;
    Ok(Some((minutes(a)?, minutes(b)?)))
}

/// Whether `minute` of the day (0..1440) lies in `hours`.
pub fn in_hours(hours: Option<(u32, u32)>, minute: u32) -> bool {
    match hours {
        None => true,
        Some((a, b)) if a <= b => (a..b).contains(&minute),
        Some((a, b)) => minute >= a || minute < b,
    }
}

/// Checks the notification targets; an error names the key in full and its line.
pub(crate) fn validate(
    cfg: &mut crate::Config,
    text: &str,
    path: &std::path::Path,
) -> Result<(), crate::ConfigError> {
    for (i, n) in cfg.notify.iter_mut().enumerate() {
        if let Err((key, message)) = n.validate() {
            return Err(crate::ConfigError::Invalid {
                path: path.to_path_buf(),
                line: crate::locate::find_key_line(text, &key)
                    .or_else(|| crate::locate::find_key_line(text, "events"))
                    .unwrap_or(1),
                key: format!("key `notify[{i}].{key}`: "),
                message,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_hours_may_pass_midnight() {
        let day = parse_hours("08:00-20:00").unwrap();
        assert!(in_hours(day, 8 * 60) && !in_hours(day, 20 * 60) && !in_hours(day, 3 * 60));
        let night = parse_hours("22:00-06:00").unwrap();
        assert!(in_hours(night, 23 * 60) && in_hours(night, 60) && !in_hours(night, 12 * 60));
        assert!(in_hours(parse_hours("").unwrap(), 0));
        assert!(parse_hours("8-20").is_err());
        assert!(parse_hours("08:00-25:00").is_err());
    }
}
