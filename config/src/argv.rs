//! Commands as argument vectors: split once when the config loads, filled one argument at a
//! time, never handed to a shell.
//!
//! File, folder and stack names come from the beamline, and anyone who can write into a
//! watch folder chooses them. A workflow's `command` and a queue's `launch` template are
//! therefore split into words here, with the quoting rules of a POSIX shell but none of its
//! expansions, and each `{placeholder}` is later replaced inside the one argument it sits in.
//! A value can then hold `$( )`, backticks, `;`, quotes, a newline or a leading `-` and still
//! arrive as exactly one argument. The one place a shell may appear is a step that asks for
//! one itself (`sh -c '…'`): values substituted into that script are quoted for it.

/// Characters that mean something to a shell when unquoted. A command that uses them
/// expects a shell that is not there, so the config refuses it instead of passing them on
/// as literal arguments.
const OPERATORS: &[char] = &['|', '&', ';', '<', '>', '(', ')', '$', '`'];

/// Splits a command line into words: blanks separate, `'…'` and `"…"` quote, `\` escapes.
/// Nothing is expanded; shell operators outside quotes are refused with what to write instead.
pub fn split(line: &str) -> Result<Vec<String>, String> {
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
                        None => return Err("a single quote (') is never closed".into()),
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
                            None => return Err("a double quote (\") is never closed".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("a double quote (\") is never closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("the line ends with a lone backslash".into()),
                }
            }
            c if OPERATORS.contains(&c) => {
                return Err(format!(
                    "`{c}` would need a shell, and commands run without one; quote it to pass it \
                     literally, or write the step as `sh -c '…'` if a shell is really meant"
                ));
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
        return Err("the command is empty".into());
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
/// `{{` and `}}` become single braces.
pub fn fill(arg: &str, lookup: &dyn Fn(&str) -> Option<String>, quote_values: bool) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{') {
            if let Some(end) = tail.find('}') {
                let name = &tail[1..end];
                if let Some(v) = lookup(name) {
                    out.push_str(&if quote_values { quote(&v) } else { v });
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

/// Whether argument `i` of `argv` is a script a shell will run (`sh -c SCRIPT`, `bash -ec
/// SCRIPT` …): values substituted into it must be quoted for that shell.
pub fn is_shell_script(argv: &[String], i: usize) -> bool {
    let Some(prog) = argv.first() else {
        return false;
    };
    let base = prog.rsplit('/').next().unwrap_or(prog);
    if !matches!(
        base,
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh"
    ) || i < 2
    {
        return false;
    }
    // the script is the first word after the option cluster holding `c`
    let opts = &argv[1..i];
    opts.iter().all(|o| o.starts_with('-'))
        && opts
            .last()
            .is_some_and(|o| !o.starts_with("--") && o.contains('c'))
}

/// Fills every argument of a template; see [`fill`] and [`is_shell_script`].
pub fn fill_all(template: &[String], lookup: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    template
        .iter()
        .enumerate()
        .map(|(i, a)| fill(a, lookup, is_shell_script(template, i)))
        .collect()
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
            assert!(e.contains("without one"), "{bad}: {e}");
        }
        assert!(split("a 'b").unwrap_err().contains("never closed"));
        assert!(split("a \"b").unwrap_err().contains("never closed"));
        assert!(split("   ").unwrap_err().contains("empty"));
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

    #[test]
    fn values_in_a_shell_script_are_quoted_for_it() {
        let t = v(&["sh", "-ec", "cp {first} out/", "{first}"]);
        let look = |_: &str| Some("a'b $(id)".to_string());
        let out = fill_all(&t, &look);
        assert_eq!(out[2], r"cp 'a'\''b $(id)' out/");
        assert_eq!(out[3], "a'b $(id)");
        // and the shell really sees one word
        let got = std::process::Command::new("sh")
            .args(["-c", &format!("printf %s {}", quote("a'b $(id) \n*"))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(got.stdout).unwrap(), "a'b $(id) \n*");
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
