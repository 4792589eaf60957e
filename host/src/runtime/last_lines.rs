//! The last lines a cell or a child process wrote (its stderr, usually),
//! kept for the error that reports its failure: a wasm trap, a process
//! that failed its handshake, a venv build. Bounded whatever is written:
//! a few lines, each cut at a byte limit (on a character boundary), blank
//! lines left out.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The last `keep` non-blank lines of a stream, each at most `line_bytes`.
pub struct LastLines {
    keep: usize,
    line_bytes: usize,
    lines: VecDeque<String>,
    /// The line being written, up to `line_bytes`.
    partial: Vec<u8>,
    /// The rest of a line longer than `line_bytes` is being passed over.
    cut: bool,
}

impl LastLines {
    pub fn new(keep: usize, line_bytes: usize) -> Self {
        Self {
            keep,
            line_bytes,
            lines: VecDeque::with_capacity(keep),
            partial: Vec::new(),
            cut: false,
        }
    }

    /// Takes bytes as they were written. `each` sees every line, blank or
    /// not, in pieces of at most `line_bytes`; only a line's first piece is
    /// kept.
    pub fn write(&mut self, bytes: &[u8], mut each: impl FnMut(&str)) {
        for &b in bytes {
            if b == b'\n' {
                self.end_piece(false, &mut each);
                continue;
            }
            if self.partial.len() == self.line_bytes {
                self.end_piece(true, &mut each);
            }
            self.partial.push(b);
        }
    }

    /// Reads `from` to its end (or its first error). Cancel-safe: what was
    /// read before a timeout stays.
    pub async fn read(&mut self, from: &mut (impl AsyncRead + Unpin)) {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            self.write(&buf[..n], |_| {});
        }
    }

    /// The lines kept, oldest first, the unfinished last one included; then
    /// forgotten.
    pub fn take(&mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            self.end_piece(false, &mut |_| {});
        }
        self.cut = false;
        self.lines.drain(..).collect()
    }

    /// Ends the piece in `partial`: a whole line (less a CR before its
    /// LF), or (`more`) the first `line_bytes` of a longer one, less a
    /// character cut in two, which starts the next piece.
    fn end_piece(&mut self, more: bool, each: &mut impl FnMut(&str)) {
        let whole = match std::str::from_utf8(&self.partial) {
            Err(e) if more && e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
            _ => self.partial.len(),
        };
        let rest = self.partial.split_off(whole);
        if !more && self.partial.last() == Some(&b'\r') {
            self.partial.pop();
        }
        let piece = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial = rest;
        each(&piece);
        if !self.cut && !piece.trim().is_empty() {
            if self.lines.len() == self.keep {
                self.lines.pop_front();
            }
            self.lines.push_back(piece);
        }
        self.cut = more;
    }
}

/// `lines` as an error quotes them: "; it wrote: a | b", or nothing.
pub fn quoted(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!("; it wrote: {}", lines.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(keep: usize, line_bytes: usize, text: &str) -> Vec<String> {
        let mut last = LastLines::new(keep, line_bytes);
        last.write(text.as_bytes(), |_| {});
        last.take()
    }

    #[test]
    fn keeps_the_last_non_blank_lines_and_the_unfinished_one() {
        assert_eq!(kept(2, 100, "a\nb\n\n  \nc\nd"), ["c", "d"]);
        assert_eq!(kept(3, 100, "a\r\nb\r"), ["a", "b"]);
        assert!(kept(3, 100, "\n\n").is_empty());
    }

    #[test]
    fn a_long_line_is_kept_cut_and_passed_to_each_in_pieces() {
        let mut last = LastLines::new(4, 4);
        let mut seen = Vec::new();
        last.write(b"abcdefghij\nxy\n", |l| seen.push(l.to_owned()));
        assert_eq!(seen, ["abcd", "efgh", "ij", "xy"]);
        assert_eq!(last.take(), ["abcd", "xy"]);
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let line = "é".repeat(10);
        let kept = kept(1, 5, &line);
        assert_eq!(kept, ["éé"]);
        let mut seen = Vec::new();
        LastLines::new(1, 5).write(line.as_bytes(), |l| seen.push(l.to_owned()));
        assert!(seen.iter().all(|p| !p.contains('\u{fffd}')), "{seen:?}");
    }

    #[test]
    fn take_forgets() {
        let mut last = LastLines::new(2, 10);
        last.write(b"a\nb", |_| {});
        assert_eq!(last.take(), ["a", "b"]);
        assert!(last.take().is_empty());
    }

    #[tokio::test]
    async fn read_takes_a_stream_to_its_end() {
        let mut last = LastLines::new(2, 10);
        last.read(&mut &b"one\ntwo\nthree"[..]).await;
        assert_eq!(last.take(), ["two", "three"]);
        assert_eq!(quoted(&["a".into(), "b".into()]), "; it wrote: a | b");
        assert_eq!(quoted(&[]), "");
    }
}
