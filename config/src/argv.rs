//! Commands as argument vectors: split once when the config loads, filled one argument at a
//! time, never handed to a shell.
//!
//! File, folder and stack names come from the beamline, and anyone who can write into a
//! watch folder chooses them. A workflow's `command`, a queue's `launch` template and a
//! `[[notify]] command` are therefore split into words here, with the quoting rules of a
//! POSIX shell but none of its expansions, and each `{placeholder}` is later replaced inside
//! the one argument it sits in. A value can then hold `$( )`, backticks, `;`, quotes, a
//! newline or a leading `-` and still arrive as exactly one argument.
//!
//! That alone does not keep a name from being *run*: `bash -o pipefail -c 'echo {stack}'`,
//! `env sh -c '…'` or `python3 -c '…{stack}…'` hand the argument to an interpreter, and no
//! list of interpreters can be complete. So the rule is made by construction, not by
//! guessing programs ([`check_names`]): a value derived from beamline names may only be a
//! whole argument, or a whole argument with a fixed prefix and suffix made of characters no
//! shell or interpreter gives a meaning to (`-fixed {first}`, `images/{first}.tif`). A
//! step that wants a shell reads the same values from the environment instead
//! (`sh -c 'echo "$BEAMFLOW_STACK"'`), where no interpreter ever parses them as code.

/// Characters that mean something to a shell when unquoted. A command that uses them
/// expects a shell that is not there, so the config refuses it instead of passing them on
/// as literal arguments.
const OPERATORS: &[char] = &['|', '&', ';', '<', '>', '(', ')', '$', '`'];

/// Why a command line was refused: each says what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A quote opened and never closed.
    #[error("a {name} ({quote}) is never closed")]
    Unclosed {
        /// "single quote" or "double quote".
        name: &'static str,
        /// The quote character.
        quote: char,
    },
    /// A backslash at the very end escapes nothing.
    #[error("the line ends with a lone backslash")]
    LoneBackslash,
    /// A shell operator outside quotes: there is no shell to obey it.
    #[error(
        "`{0}` would need a shell, and commands run without one; quote it to pass it \
         literally, or write the step as `sh -c '…'` if a shell is really meant"
    )]
    Operator(char),
    /// Nothing to run.
    #[error("the command is empty")]
    Empty,
    /// A value derived from beamline names would become code or the program itself.
    #[error("{{{name}}} comes from a beamline name{how}; pass it as an argument of its own (\"{{{name}}}\") or read it from the environment in a script ({env_hint}){example}")]
    NameAsCode {
        /// The placeholder.
        name: String,
        /// How the template would let it be run.
        how: String,
        /// The environment variables that carry the same values.
        env_hint: String,
        /// An example of the safe way, where one helps.
        example: &'static str,
    },
}

/// Splits a command line into words: blanks separate, `'…'` and `"…"` quote, `\` escapes.
/// Nothing is expanded; shell operators outside quotes are refused with what to write instead.
pub fn split(line: &str) -> Result<Vec<String>, CommandError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => {
                            return Err(CommandError::Unclosed {
                                name: "single quote",
                                quote: '\'',
                            })
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => {
                                return Err(CommandError::Unclosed {
                                    name: "double quote",
                                    quote: '"',
                                })
                            }
                        },
                        Some(c) => cur.push(c),
                        None => {
                            return Err(CommandError::Unclosed {
                                name: "double quote",
                                quote: '"',
                            })
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(CommandError::LoneBackslash),
                }
            }
            c if OPERATORS.contains(&c) => {
                return Err(CommandError::Operator(c));
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(words)
}

/// Quotes one value for a POSIX shell: unchanged when it holds only characters no shell
/// treats specially, else in single quotes.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// An argument vector as one line a person can read and paste into a shell.
pub fn render(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// The `{name}` placeholders in one argument, in order (`{{` is a literal brace).
pub fn placeholders(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = arg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{' {
            if b.get(i + 1) == Some(&b'{') {
                i += 2;
                continue;
            }
            if let Some(end) = arg[i + 1..].find('}') {
                out.push(&arg[i + 1..i + 1 + end]);
                i += end + 2;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Fills the placeholders of one argument in a single pass: a value is never scanned again,
/// so a name that itself looks like `{grid_size}` stays as it is. Unknown names are kept;
/// `{{` and `}}` become single braces. Values go in as they are: [`check_names`] made sure
/// when the config loaded that no value lands where an interpreter would parse it.
pub fn fill(arg: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    fill_pass(arg, lookup, false)
}

/// Fills only the placeholders `lookup` knows and leaves the rest, escapes included, for a
/// later [`fill`]: a plan fills what it knows (`{bin}`, a job's own `{part}`) before the
/// work folder tells the rest.
pub fn fill_known(arg: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    fill_pass(arg, lookup, true)
}

fn fill_pass(arg: &str, lookup: &dyn Fn(&str) -> Option<String>, keep_escapes: bool) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..if keep_escapes { 2 } else { 1 }]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{') {
            if let Some(end) = tail.find('}') {
                let name = &tail[1..end];
                if let Some(v) = lookup(name) {
                    out.push_str(&v);
                    rest = &tail[end + 1..];
                    continue;
                }
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// Fills every argument of a template; see [`fill`].
pub fn fill_all(template: &[String], lookup: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    template.iter().map(|a| fill(a, lookup)).collect()
}

/// Characters a fixed prefix or suffix around a name-derived value may hold: none of them
/// means anything to a shell, and none starts code in the interpreters one meets in job
/// scripts (no blanks, quotes, `$`, backticks, brackets, `;`, `|`, `&`, `<`, `>`, `*`, `?`,
/// `#`, `!`, `~`, `\`).
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c)
}

/// Options that make common programs run their next argument as code (`sh -c`, `perl -e`,
/// `python3 -c`, `bash -ec`). This list is not the guarantee (the plain-characters rule is);
/// it only refuses the one way left to hand a whole name to an interpreter.
pub fn runs_next_as_code(word: &str) -> bool {
    if matches!(word, "--command" | "--eval" | "--execute" | "-Command") {
        return true;
    }
    word.len() >= 2
        && word.len() <= 4
        && word.starts_with('-')
        && !word.starts_with("--")
        && word[1..].chars().all(|c| c.is_ascii_alphabetic())
        && word.ends_with(['c', 'e', 'E'])
}

/// Refuses a template that would let a name-derived value (`tainted`: `{stack}`,
/// `{images}`, `{first}`, `{last}`, `{subject}` …) reach anything but a plain argument.
/// Such a value may sit only in an argument whose every other character is plain (see
/// `is_plain`): a whole argument, or one with a fixed prefix/suffix. It may not be the
/// program, nor follow an option that runs its argument as code. `env_hint` names the
/// environment variables that carry the same values, for the message.
pub fn check_names(argv: &[String], tainted: &[&str], env_hint: &str) -> Result<(), CommandError> {
    for (i, arg) in argv.iter().enumerate() {
        let names: Vec<&str> = placeholders(arg)
            .into_iter()
            .filter(|p| tainted.contains(p))
            .collect();
        let Some(first) = names.first() else {
            continue;
        };
        let refuse = |how: String, example: &'static str| CommandError::NameAsCode {
            name: first.to_string(),
            how,
            env_hint: env_hint.to_string(),
            example,
        };
        if i == 0 {
            return Err(refuse(" and cannot be the program to run".into(), ""));
        }
        if runs_next_as_code(&argv[i - 1]) {
            let by = &argv[i - 1];
            return Err(refuse(
                format!(" and would be run as code by `{by} {arg}`"),
                "",
            ));
        }
        let literal = fill(arg, &|_| Some(String::new()));
        if let Some(c) = literal.chars().find(|c| !is_plain(*c)) {
            return Err(refuse(
                format!(
                    ", and the argument {arg:?} around it holds {c:?}, which a shell or \
                     interpreter may parse, so the name could be run as code"
                ),
                ", e.g. sh -c 'echo \"$BEAMFLOW_STACK\" > out.txt'",
            ));
        }
        if literal.starts_with('-') && runs_next_as_code(&literal) {
            return Err(refuse(format!(" and would be run as code by {arg:?}"), ""));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_like_a_shell_without_expanding() {
        assert_eq!(
            split("find_rst -tx -50-50  -images images/").unwrap(),
            v(&["find_rst", "-tx", "-50-50", "-images", "images/"])
        );
        assert_eq!(
            split(r#"sh -c 'echo $HOME; ls' "a b" c\ d "q\"x""#).unwrap(),
            v(&["sh", "-c", "echo $HOME; ls", "a b", "c d", "q\"x"])
        );
        assert_eq!(split("x ''").unwrap(), v(&["x", ""]));
    }

    #[test]
    fn refuses_what_would_need_a_shell() {
        for bad in [
            "a | b",
            "a > log",
            "a; b",
            "a && b",
            "echo $(id)",
            "echo `id`",
            "a $X",
        ] {
            let e = split(bad).unwrap_err();
            assert!(e.to_string().contains("without one"), "{bad}: {e}");
        }
        assert!(split("a 'b")
            .unwrap_err()
            .to_string()
            .contains("never closed"));
        assert!(split("a \"b")
            .unwrap_err()
            .to_string()
            .contains("never closed"));
        assert!(split("   ").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn a_value_stays_one_argument_and_is_never_scanned_again() {
        let hostile = "$(id>PWNED) `id`;|&& 'q\"\n* -x {grid_size}";
        let look = |n: &str| match n {
            "first" => Some(hostile.to_string()),
            "grid_size" => Some("64x64".to_string()),
            _ => None,
        };
        let t = v(&[
            "align",
            "-fixed",
            "{first}",
            "-g",
            "{grid_size}",
            "{unknown}",
            "{{x}}",
        ]);
        let out = fill_all(&t, &look);
        assert_eq!(out.len(), t.len());
        assert_eq!(out[2], hostile);
        assert_eq!(out[4], "64x64");
        assert_eq!(out[5], "{unknown}");
        assert_eq!(out[6], "{x}");
    }

    const NAMES: &[&str] = &["stack", "images", "first", "last"];

    fn check(line: &str) -> Result<(), CommandError> {
        check_names(&split(line).unwrap(), NAMES, "$BEAMFLOW_STACK")
    }

    #[test]
    fn names_may_be_whole_arguments_or_have_a_plain_prefix_and_suffix() {
        for ok in [
            "align -fixed {first} -images {images}/",
            "find_rst -pairs pairs.lst -images images/{first}.tif",
            "tool --stack={stack} {grid_size} {last}",
            "sh -c 'echo \"$BEAMFLOW_STACK\" > u.txt'",
            "sh -c 'cp \"$1\" out/' sh {first}",
            "tool -image {first} -e2e {last}",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
    }

    #[test]
    fn a_name_that_an_interpreter_could_parse_is_refused_whatever_the_program() {
        for bad in [
            "bash -o pipefail -c 'echo {stack} > u.txt'",
            "sh -c 'echo {stack}'",
            "env sh -c 'echo {stack}'",
            "timeout 60 sh -c 'echo {first}'",
            "nice sh -c 'cat {images}/x'",
            "python3 -c 'print(\"{stack}\")'",
            "perl -e 'print \"{last}\"'",
            "awk 'BEGIN{{print \"{stack}\"}}'",
            "tool '{stack} more'",
            "tool \"x;{stack}\"",
            "tool $'{stack}'",
            "sh -c {stack}",
            "python3 -c {first}",
            "perl -e {last}",
            "bash -ec {stack}",
            "python3 -c{stack}",
            "{stack} --help",
            "{images}/run.sh",
        ] {
            let words = match split(bad) {
                Ok(w) => w,
                Err(_) => continue, // refused earlier still: `$` outside quotes
            };
            let e = check_names(&words, NAMES, "$BEAMFLOW_STACK")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("beamline name") && e.contains("BEAMFLOW_STACK"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_refused_form_really_would_have_run_the_name() {
        // what the rule prevents, shown with a real shell: a name inside a script is code
        let d = std::env::temp_dir().join(format!("beamflow-argv-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let name = "a$(touch PWNED)b";
        let script = fill("echo {stack} > u.txt", &|_| Some(name.to_string()));
        std::process::Command::new("sh")
            .args(["-c", &script])
            .current_dir(&d)
            .status()
            .unwrap();
        assert!(d.join("PWNED").exists());
        std::fs::remove_file(d.join("PWNED")).unwrap();
        // and the way the message gives runs it as data
        std::process::Command::new("sh")
            .args(["-c", "echo \"$BEAMFLOW_STACK\" > u.txt"])
            .env("BEAMFLOW_STACK", name)
            .current_dir(&d)
            .status()
            .unwrap();
        assert!(!d.join("PWNED").exists());
        assert_eq!(
            std::fs::read_to_string(d.join("u.txt")).unwrap(),
            format!("{name}\n")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn placeholders_are_listed_and_rendering_round_trips() {
        assert_eq!(
            placeholders("-g{grid_size}x{{y}}{first}"),
            ["grid_size", "first"]
        );
        let argv = v(&["a b", "", "plain/x.tif", "it's", "-x"]);
        assert_eq!(split(&render(&argv)).unwrap(), argv);
    }
}
