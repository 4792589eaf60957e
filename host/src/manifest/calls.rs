//! A call grant (`calls` under `[capabilities]`): the cell id, and the
//! versions of it the caller works with, e.g. `"logic.greet@^1"`. The
//! range is what `cbs deploy` checks the lattice against and what
//! `cbs deps` resolves; without one, any version does.

use std::fmt;

use anyhow::Context as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub cell: String,
    pub range: Option<semver::VersionReq>,
}

impl Call {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (cell, range) = match text.split_once('@') {
            Some((cell, range)) => (cell, Some(range)),
            None => (text, None),
        };
        super::check_cell_id(cell)?;
        let range = range
            .map(|r| {
                semver::VersionReq::parse(r).with_context(|| {
                    format!("{r:?} in {text:?} is not a version range (e.g. ^1, ~1.2, >=1.2, <3)")
                })
            })
            .transpose()?;
        Ok(Self {
            cell: cell.to_owned(),
            range,
        })
    }

    /// Whether `version` (of this cell) is one the caller works with; a
    /// version that is not semver matches only a call without a range.
    pub fn admits(&self, version: &str) -> bool {
        match &self.range {
            None => true,
            Some(range) => semver::Version::parse(version).is_ok_and(|v| range.matches(&v)),
        }
    }
}

/// Grants as `id@range, id, ...`.
pub fn list(calls: &[Call], separator: &str) -> String {
    let texts: Vec<String> = calls.iter().map(ToString::to_string).collect();
    texts.join(separator)
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.range {
            Some(range) => write!(f, "{}@{range}", self.cell),
            None => f.write_str(&self.cell),
        }
    }
}

impl Serialize for Call {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Call {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_carries_an_optional_range() {
        let c = Call::parse("logic.greet@^1").unwrap();
        assert_eq!(c.cell, "logic.greet");
        assert!(c.admits("1.4.0") && !c.admits("2.0.0") && !c.admits("not-semver"));
        assert_eq!(c.to_string(), "logic.greet@^1");
        let any = Call::parse("io.print").unwrap();
        assert!(any.range.is_none() && any.admits("9.9.9") && any.admits("x"));
        for bad in ["Logic.greet@^1", "logic.greet@", "logic.greet@one", "@^1"] {
            assert!(Call::parse(bad).is_err(), "{bad}");
        }
    }
}
