//! Majors side by side (docs/adr/0031-majors-side-by-side.md): each served
//! version of a cell also answers on its major's subject,
//! `cbs.~v<major>.<cell>` (`~v0_<minor>` before 1.0, where each minor may
//! break), so a lattice can serve 1.x and 2.x of one cell at once. A
//! caller that declared a range (`calls = ["logic.greet@^1"]`) sends to
//! the major its range names, and marks the request with it (the
//! envelope's `schema`: `logic.greet@^1`); the receiver refuses a request
//! whose range its version is outside, so neither major ever answers in
//! the other's shape. A caller without a range keeps `cbs.<cell>`: the
//! current release.

use semver::{Comparator, Op, Version, VersionReq};

use crate::envelope::{BusError, ErrorCode};
use crate::manifest::Manifest;

/// The major of `version` (`1`, `2`, or `0_3` for 0.3.x); none when it is
/// not semver.
pub fn of_version(version: &str) -> Option<String> {
    let v = Version::parse(version).ok()?;
    Some(lane(v.major, v.minor))
}

fn lane(major: u64, minor: u64) -> String {
    if major > 0 {
        major.to_string()
    } else {
        format!("0_{minor}")
    }
}

/// The one major every version in `range` belongs to; none when the range
/// spans several (then the call goes to the current release).
pub fn of_range(range: &VersionReq) -> Option<String> {
    match range.comparators.as_slice() {
        [one] => single(one),
        [low, high] => between(low, high),
        _ => None,
    }
}

fn single(c: &Comparator) -> Option<String> {
    match (c.op, c.major, c.minor) {
        (Op::Caret | Op::Tilde | Op::Exact | Op::Wildcard, major, _) if major > 0 => {
            Some(lane(major, 0))
        }
        (Op::Caret | Op::Tilde | Op::Exact | Op::Wildcard, 0, Some(minor)) => Some(lane(0, minor)),
        _ => None,
    }
}

/// `>=a, <b` (in either order) inside one major.
fn between(a: &Comparator, b: &Comparator) -> Option<String> {
    let (low, high) = match (a.op, b.op) {
        (Op::Greater | Op::GreaterEq, Op::Less) => (a, b),
        (Op::Less, Op::Greater | Op::GreaterEq) => (b, a),
        _ => return None,
    };
    let low_lane = lane(low.major, low.minor.unwrap_or(0));
    // The highest version below `high` is in `high`'s major unless `high`
    // is that major's first version (x.0.0, or 0.y.0 before 1.0).
    let first = high.minor.unwrap_or(0) == 0 && high.patch.unwrap_or(0) == 0;
    let high_lane = match (high.major, first) {
        (0, _) => {
            let minor = high.minor.unwrap_or(0);
            let at_start = high.patch.unwrap_or(0) == 0;
            lane(
                0,
                if at_start {
                    minor.checked_sub(1)?
                } else {
                    minor
                },
            )
        }
        (major, true) => lane(major - 1, 0),
        (major, false) => lane(major, 0),
    };
    (low_lane == high_lane).then_some(low_lane)
}

/// Where a major of a cell is served.
pub fn subject(lane: &str, cell_id: &str) -> String {
    format!("cbs.~v{lane}.{cell_id}")
}

/// What a caller with a range writes in a request's `schema`.
pub fn request_schema(cell_id: &str, range: &VersionReq) -> String {
    format!("{cell_id}@{range}")
}

/// Refuses a request for `cell` whose `schema` names a range of it that
/// its version is outside (or another input contract). A schema naming
/// neither is not this check's business.
pub fn check_request(cell: &Manifest, schema: Option<&str>) -> Result<(), BusError> {
    let Some(schema) = schema else {
        return Ok(());
    };
    if let Some(range) = schema
        .strip_prefix(cell.id.as_str())
        .and_then(|r| r.strip_prefix('@'))
    {
        let admits = VersionReq::parse(range)
            .ok()
            .zip(Version::parse(&cell.version).ok())
            .is_some_and(|(r, v)| r.matches(&v));
        if !admits {
            return Err(BusError::new(
                ErrorCode::ContractViolation,
                format!(
                    "{} {} is outside the range the caller works with ({schema}): its reply would not be the shape the caller expects",
                    cell.id, cell.version
                ),
            ));
        }
        return Ok(());
    }
    match &cell.input {
        Some(input) if schema.contains('/') && input.id != schema => Err(BusError::new(
            ErrorCode::ContractViolation,
            format!(
                "the request is for contract {schema}, {} {} takes {}",
                cell.id, cell.version, input.id
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Option<String> {
        of_range(&VersionReq::parse(text).unwrap())
    }

    #[test]
    fn a_range_names_the_major_it_stays_in() {
        for (r, lane) in [
            ("^1", Some("1")),
            ("^1.4.2", Some("1")),
            ("~2.1", Some("2")),
            ("=3.0.1", Some("3")),
            ("1.*", Some("1")),
            ("^0.3", Some("0_3")),
            (">=1.2, <2", Some("1")),
            (">=1.2, <2.0.0", Some("1")),
            (">=2.0.0, <2.5", Some("2")),
            (">=0.2, <0.3", Some("0_2")),
            (">=1, <3", None),
            (">=1.2", None),
            ("^0", None),
            ("*", None),
        ] {
            assert_eq!(range(r).as_deref(), lane, "{r}");
        }
        assert_eq!(of_version("2.3.4").as_deref(), Some("2"));
        assert_eq!(of_version("0.4.1").as_deref(), Some("0_4"));
        assert_eq!(of_version("v2"), None);
        assert_eq!(subject("2", "logic.greet"), "cbs.~v2.logic.greet");
    }

    #[test]
    fn a_request_outside_the_receivers_version_is_refused() {
        let m = |version: &str| {
            Manifest::parse(&format!(
                "id = \"logic.greet\"\nversion = \"{version}\"\ncomponent = \"c.wasm\"\n\
                 [input]\nid = \"logic.greet/request@1\"\nschema = \"in.json\"\n"
            ))
            .unwrap()
        };
        assert!(check_request(&m("1.2.0"), Some("logic.greet@^1")).is_ok());
        let e = check_request(&m("2.0.0"), Some("logic.greet@^1")).unwrap_err();
        assert_eq!(e.code, ErrorCode::ContractViolation);
        assert!(check_request(&m("2.0.0"), None).is_ok());
        assert!(check_request(&m("2.0.0"), Some("logic.greet@garbage")).is_err());
        assert!(check_request(&m("1.0.0"), Some("logic.greet/request@1")).is_ok());
        assert!(check_request(&m("1.0.0"), Some("logic.greet/request@2")).is_err());
        assert!(check_request(&m("1.0.0"), Some("something else")).is_ok());
    }
}
