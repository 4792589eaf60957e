//! The fuzz targets: one function per parser of outside input, each taking
//! arbitrary bytes. A target fails only by panicking — on a crash, or on a
//! broken invariant it asserts.
//!
//! `libfuzzer/` runs them under cargo-fuzz (`make fuzz`); `tests/smoke.rs`
//! replays the committed corpora and a short seeded mutation run in
//! `make test`, on stable Rust.

use bytes::BytesMut;
use cbs_host::bundle::Bundle;
use cbs_host::contract::compat::{self, Direction};
use cbs_host::contract::Schema;
use cbs_host::envelope::Envelope;
use cbs_host::manifest::Manifest;
use cbs_host::runtime::process::frame::FrameCodec;
use cbs_host::runtime::python::lock::Lock;
use tokio_util::codec::Decoder;

mod jwt;
mod lattice;
mod request;
mod trace;

pub use jwt::jwt;
pub use lattice::{heartbeat, load_report};
pub use request::http_request;
pub use trace::traceparent;

/// A fuzz target: arbitrary bytes in, a panic on failure.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus folder and the cargo-fuzz binary).
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("cell_toml", cell_toml),
    ("bundle", bundle),
    ("frame", frame),
    ("compat", compat),
    ("python_lock", python_lock),
    ("jwt", jwt),
    ("traceparent", traceparent),
    ("http_request", http_request),
    ("load_report", load_report),
    ("heartbeat", heartbeat),
];

/// An envelope from the wire: parsed or refused; a parsed one survives a
/// round trip unchanged.
pub fn envelope(data: &[u8]) {
    let Ok(envelope) = Envelope::from_slice(data) else {
        return;
    };
    let again = Envelope::from_slice(&envelope.to_vec()).expect("a parsed envelope reparses");
    assert_eq!(again.to_vec(), envelope.to_vec(), "round trip changed it");
}

/// A `cell.toml`: parsed and checked, or refused.
pub fn cell_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse(text);
    }
}

/// A bundle file: read and checked (sizes, names, digests), or refused.
pub fn bundle(data: &[u8]) {
    if let Ok(bundle) = Bundle::from_bytes(data) {
        let _ = bundle.cell_manifest();
        let _ = bundle.digest();
    }
}

/// A process's stdout, cut into frames of at most 1 KiB: never a frame
/// over the limit, and the stream is used up or refused.
pub fn frame(data: &[u8]) {
    const MAX: usize = 1024;
    let mut codec = FrameCodec::new(MAX);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => assert!(frame.len() <= MAX, "a frame over the limit"),
            Ok(None) => return assert!(buf.is_empty(), "bytes left unread"),
            Err(_) => return,
        }
    }
}

/// Two JSON Schemas (the input split at its first NUL): checked both ways;
/// a schema the host accepts (it compiles) never breaks itself.
pub fn compat(data: &[u8]) {
    let mut parts = data.splitn(2, |b| *b == 0);
    let (Some(old), Some(new)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(old), Ok(new)) = (
        serde_json::from_slice::<serde_json::Value>(old),
        serde_json::from_slice::<serde_json::Value>(new),
    ) else {
        return;
    };
    let valid = Schema::compile("fuzz", &old).is_ok();
    for direction in [Direction::Input, Direction::Output] {
        let _ = compat::check(&old, &new, direction);
        let own = compat::check(&old, &old, direction);
        assert!(!valid || own.is_empty(), "{old} breaks itself: {own:?}");
    }
}

/// A bundle's requirements lock: refused, or accepted and re-written (what
/// pip is given) into a lock that reads back to the same pins and holds
/// nothing pip would treat as an option, marker or variable.
pub fn python_lock(data: &[u8]) {
    let Ok(lock) = std::str::from_utf8(data).map(Lock::parse) else {
        return;
    };
    let Ok(lock) = lock else {
        return;
    };
    let rendered = lock.render();
    let again = Lock::parse(&rendered).expect("a re-written lock reads back");
    assert_eq!(again, lock, "the re-written lock names other pins");
    for line in rendered.lines() {
        let plain = |c: char| c.is_ascii_alphanumeric() || " .=_-+!:".contains(c);
        assert!(line.chars().all(plain), "pip would be given {line:?}");
        assert_eq!(line.matches(" -").count(), line.matches(" --hash=").count());
    }
}
