//! Platforms: what native code in a bundle (a sidecar's executable) was
//! built for, named `<os>-<arch>` as Rust names them (`linux-x86_64`,
//! `macos-aarch64`), or `any` for code that runs everywhere. Below both
//! `manifest` (`[bundle] platform`) and `bundle` (`MANIFEST.json`), which
//! check the same names.

use anyhow::bail;

/// Runs on every platform (scripts, wasm).
pub const ANY: &str = "any";
/// The host label that carries a host's platform, and the placement
/// constraint a release with native code gets (`cbs deploy`).
pub const LABEL: &str = "platform";

/// This machine's platform.
pub fn current() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// Whether code built for `platform` runs on this machine.
pub fn runs_here(platform: &str) -> bool {
    platform == ANY || platform == current()
}

/// A platform name: `any`, or `<os>-<arch>` in lower case letters, digits
/// and `_` (at most 64 bytes).
pub fn check(platform: &str) -> anyhow::Result<()> {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let valid = platform == ANY
        || (platform.len() <= 64
            && platform
                .split_once('-')
                .is_some_and(|(os, arch)| word(os) && word(arch)));
    if !valid {
        bail!(
            "platform {platform:?} is not `any` or `<os>-<arch>` (e.g. {})",
            current()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_machine_and_checks_names() {
        assert!(runs_here(&current()));
        assert!(runs_here(ANY));
        assert!(!runs_here("plan9-mips"));
        check(&current()).unwrap();
        check("linux-aarch64").unwrap();
        for bad in [
            "",
            "linux",
            "Linux-x86_64",
            "linux-x86-64-",
            "-x86",
            "linux-",
            "a b-c",
        ] {
            assert!(check(bad).is_err(), "{bad:?} passed");
        }
    }
}
