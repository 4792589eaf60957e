//! Where a cell lives in a registry: `HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]`,
//! as the OCI distribution spec spells it. The registry is always named:
//! there is no default registry a cell silently comes from.

use std::fmt;

use anyhow::{bail, Context as _};

/// A parsed reference. Without a tag or digest it names the repository,
/// whose highest version is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let hint = "give HOST[:PORT]/REPOSITORY[:TAG], e.g. localhost:5000/cells/logic.greet:0.1.0";
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(check_digest(digest)?.to_owned())),
            None => (text, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .with_context(|| format!("{text:?} names no registry: {hint}"))?;
        if !looks_like_registry(registry) {
            bail!("{text:?} names no registry ({registry:?} is not a host name): {hint}");
        }
        // A tag follows the last `:` after the last `/`.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        check_repository(repository).with_context(|| format!("in {text:?}"))?;
        if let Some(tag) = tag {
            check_tag(tag).with_context(|| format!("in {text:?}"))?;
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `HOST[:PORT]/NAMESPACE`: where cells are found by id
    /// ([`Reference::child`]).
    pub fn parse_namespace(text: &str) -> anyhow::Result<Self> {
        let r = Self::parse(text)?;
        if r.tag.is_some() || r.digest.is_some() {
            bail!("{text:?} is a namespace: HOST[:PORT]/NAMESPACE, without a tag");
        }
        Ok(r)
    }

    /// The repository `name` under this one (a namespace).
    pub fn child(&self, name: &str) -> anyhow::Result<Self> {
        self.elsewhere(format!("{}/{name}", self.repository))
    }

    /// The same repository at `tag`.
    pub fn with_tag(&self, tag: &str) -> anyhow::Result<Self> {
        check_tag(tag)?;
        Ok(Self {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository at `digest`.
    pub fn at_digest(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// What the registry's manifest endpoint takes: the digest if given,
    /// else the tag.
    pub fn manifest_ref(&self) -> Option<&str> {
        self.digest.as_deref().or(self.tag.as_deref())
    }

    /// The repository's last path component (a cell's repository is named
    /// for its cell id).
    pub fn name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }

    /// The repository `name` next to this one (same registry and
    /// namespace): where a dependency is looked for.
    pub fn sibling(&self, name: &str) -> anyhow::Result<Self> {
        let repository = match self.repository.rsplit_once('/') {
            Some((namespace, _)) => format!("{namespace}/{name}"),
            None => name.to_owned(),
        };
        self.elsewhere(repository)
    }

    /// `repository` (checked) in this registry, without tag or digest.
    fn elsewhere(&self, repository: String) -> anyhow::Result<Self> {
        check_repository(&repository)?;
        Ok(Self {
            registry: self.registry.clone(),
            repository,
            tag: None,
            digest: None,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `localhost`, a name with a dot, or anything with a port.
fn looks_like_registry(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    !name.is_empty()
        && (host.contains('.') || host.contains(':') || name == "localhost")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// Path components of `[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*`.
fn check_repository(repository: &str) -> anyhow::Result<()> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        !bytes.is_empty()
            && bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes
                .iter()
                .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
            && !c.contains("..")
            && !c.contains("___")
    };
    if repository.len() > 255 || !repository.split('/').all(component_ok) {
        bail!(
            "{repository:?} is not a repository name: lower-case letters and digits, \
             separated by `.`, `_`, `-` or `/`"
        );
    }
    Ok(())
}

fn check_tag(tag: &str) -> anyhow::Result<()> {
    let ok = (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        bail!("{tag:?} is not a tag: up to 128 letters, digits, `_`, `.` or `-`");
    }
    Ok(())
}

/// `sha256:` and 64 lower-case hex digits: the only digest CBS computes.
pub fn check_digest(digest: &str) -> anyhow::Result<&str> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !ok {
        bail!("{digest:?} is not a sha256 digest (sha256:<64 hex digits>)");
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_port_tag_and_digest() {
        let r = Reference::parse("localhost:5000/cells/logic.greet:0.1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "cells/logic.greet", Some("0.1.0"))
        );
        assert_eq!(r.name(), "logic.greet");
        assert_eq!(r.to_string(), "localhost:5000/cells/logic.greet:0.1.0");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/org/logic.greet@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        let r = Reference::parse("registry.example/a/b").unwrap();
        assert_eq!((r.tag.as_deref(), r.manifest_ref()), (None, None));
        assert_eq!(
            r.sibling("io.print").unwrap().to_string(),
            "registry.example/a/io.print"
        );
    }

    #[test]
    fn a_reference_without_a_registry_or_with_bad_parts_is_refused() {
        for bad in [
            "logic.greet",
            "cells/logic.greet:1",
            "localhost:5000/Cells/x",
            "localhost:5000/x:bad tag",
            "localhost:5000/x@sha256:xyz",
            "localhost:5000/a..b",
            "localhost:5000/",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
