//! Requirements locks: the pinned, hashed pip requirements a bundled
//! native Python cell declares (`[python] requirements`).
//!
//! A lock comes from a bundle, so it is hostile: it may only name packages
//! from the index by exact version, each with its hashes (what
//! `pip-compile --generate-hashes` writes). Options that redirect pip
//! (`--index-url`, `-f`, `-e`, `-r`, …), direct URLs and local paths are
//! refused, so a lock can neither fetch from elsewhere nor read the host's
//! files; pip itself then refuses any download whose hash differs.

use anyhow::{bail, Context as _};

/// The largest lock read (a large pip-compile output is ~100 KiB).
pub const MAX_BYTES: usize = 1 << 20;
/// The most requirements in one lock.
pub const MAX_PACKAGES: usize = 10_000;

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
    pub hashes: usize,
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
        let mut packages = Vec::new();
        for (line_no, line) in logical_lines(text) {
            let pin = parse_line(&line).with_context(|| {
                format!(
                    "requirements lock line {line_no}: a lock names each package as \
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
}

/// Lines with `\` continuations joined and comments removed, each with the
/// number of the line it starts on; blank ones skipped.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let without_comment = strip_comment(raw);
        let (body, continued) = match without_comment.trim_end().strip_suffix('\\') {
            Some(body) => (body, true),
            None => (without_comment, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push(' ');
        entry.1.push_str(body);
        if !continued {
            if let Some((n, line)) = current.take() {
                if !line.trim().is_empty() {
                    lines.push((n, line.trim().to_owned()));
                }
            }
        }
    }
    if let Some((n, line)) = current.filter(|(_, l)| !l.trim().is_empty()) {
        lines.push((n, line.trim().to_owned()));
    }
    lines
}

/// pip's rule: `#` at the start or after whitespace starts a comment.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn parse_line(line: &str) -> anyhow::Result<Pin> {
    if line.starts_with('-') {
        bail!(
            "`{}` is a pip option, which a lock may not set",
            first_word(line)
        );
    }
    let (requirement, options) = match line.find(" -") {
        Some(i) => line.split_at(i),
        None => (line, ""),
    };
    let mut hashes = 0;
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let value = match word.strip_prefix("--hash") {
            Some("") => words.next().unwrap_or(""),
            Some(rest) => rest.strip_prefix('=').unwrap_or("!"),
            None => bail!("`{word}` is a pip option, which a lock may not set"),
        };
        check_hash(value)?;
        hashes += 1;
    }
    let (name, version) = parse_requirement(requirement.trim())?;
    if hashes == 0 {
        bail!("{name}=={version} has no --hash");
    }
    Ok(Pin {
        name,
        version,
        hashes,
    })
}

/// `name[extras]==version [; marker]` → name and version.
fn parse_requirement(requirement: &str) -> anyhow::Result<(String, String)> {
    let spec = requirement
        .split_once(';')
        .map_or(requirement, |(spec, _marker)| spec)
        .trim();
    if spec.contains('@') || spec.contains("://") {
        bail!("`{spec}` is a direct URL or path; a lock names packages from the index");
    }
    let Some((name, version)) = spec.split_once("==") else {
        bail!("`{spec}` is not pinned with ==");
    };
    let name = name.split_once('[').map_or(name, |(n, _extras)| n).trim();
    let version = version.trim_start_matches('=').trim();
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || !name.chars().all(is_name) {
        bail!("`{name}` is not a package name");
    }
    let is_version =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '!');
    if version.is_empty() || !version.chars().all(is_version) {
        bail!("`{version}` is not an exact version");
    }
    Ok((name.to_owned(), version.to_owned()))
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
        bail!("`--hash={value}` is not sha256:<64 hex digits> (or sha384/sha512)");
    }
    Ok(())
}

fn first_word(line: &str) -> &str {
    line.split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const H2: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    #[test]
    fn reads_what_pip_compile_writes() {
        let text = format!(
            "#\n# pip-compile --generate-hashes\n#\nnumpy==2.1.3 \\\n    --hash={H1} \\\n    \
             --hash={H2}\n    # via -r requirements.in\nrich[jupyter]==13.0.0 ; python_version >= \"3.8\" \
             --hash {H1}\n"
        );
        let lock = Lock::parse(&text).unwrap();
        assert_eq!(
            lock.packages,
            vec![
                Pin {
                    name: "numpy".into(),
                    version: "2.1.3".into(),
                    hashes: 2
                },
                Pin {
                    name: "rich".into(),
                    version: "13.0.0".into(),
                    hashes: 1
                }
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
            (&format!("numpy==2.* --hash={H1}"), "not an exact version"),
        ];
        for (line, expected) in cases {
            let err = format!("{:#}", Lock::parse(line).unwrap_err());
            assert!(err.contains(expected), "{line}: {err}");
            assert!(err.contains("line 1"), "{line}: {err}");
        }
    }

    #[test]
    fn bounds_what_it_reads() {
        let big = "#".repeat(MAX_BYTES + 1);
        assert!(format!("{:#}", Lock::parse(&big).unwrap_err()).contains("more than"));
        let many = format!("a==1 --hash={H1}\n").repeat(MAX_PACKAGES + 1);
        assert!(format!("{:#}", Lock::parse(&many).unwrap_err()).contains("more than"));
    }
}
