//! One stream's messages in a backup: a magic line, then per message its
//! sequence, subject, headers and payload, each length-prefixed (big
//! endian). A backup file comes from outside: every length is bounded
//! before anything is allocated by it.

use std::io::{self, Read, Write};

use anyhow::{bail, Context as _};

const MAGIC: &[u8; 8] = b"CBSMSG1\n";
/// The longest subject read.
const MAX_SUBJECT: usize = 64 * 1024;
/// The most headers of one message, and the longest name or value.
const MAX_HEADERS: usize = 1024;
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The largest payload: NATS's own ceiling for `max_payload`.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// One message as a stream held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Payload and header bytes.
    pub fn bytes(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.payload.len() + headers) as u64
    }
}

pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(Self { out })
    }

    pub fn write(&mut self, frame: &Frame) -> io::Result<()> {
        self.out.write_all(&frame.seq.to_be_bytes())?;
        self.bytes(frame.subject.as_bytes())?;
        self.out
            .write_all(&(frame.headers.len() as u32).to_be_bytes())?;
        for (name, value) in &frame.headers {
            self.bytes(name.as_bytes())?;
            self.bytes(value.as_bytes())?;
        }
        self.bytes(&frame.payload)
    }

    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(&(bytes.len() as u32).to_be_bytes())?;
        self.out.write_all(bytes)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

pub struct Reader<R: Read> {
    input: R,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> anyhow::Result<Self> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .context("not a stream of a CBS backup")?;
        if &magic != MAGIC {
            bail!("not a stream of a CBS backup (format {magic:?})");
        }
        Ok(Self { input })
    }

    /// The next message, or none at the end.
    pub fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        let mut seq = [0u8; 8];
        match self.input.read_exact(&mut seq) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let subject = self.text(MAX_SUBJECT, "subject")?;
        let count = self.len(MAX_HEADERS, "header count")?;
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            headers.push((
                self.text(MAX_HEADER_BYTES, "header name")?,
                self.text(MAX_HEADER_BYTES, "header value")?,
            ));
        }
        let payload = self.bytes(MAX_PAYLOAD, "payload")?;
        Ok(Some(Frame {
            seq: u64::from_be_bytes(seq),
            subject,
            headers,
            payload,
        }))
    }

    fn len(&mut self, max: usize, what: &str) -> anyhow::Result<usize> {
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .with_context(|| format!("cut short before a {what}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            bail!("a {what} of {len}, more than {max}");
        }
        Ok(len)
    }

    fn bytes(&mut self, max: usize, what: &str) -> anyhow::Result<Vec<u8>> {
        let len = self.len(max, what)?;
        let mut bytes = vec![0; len];
        self.input
            .read_exact(&mut bytes)
            .with_context(|| format!("cut short in a {what}"))?;
        Ok(bytes)
    }

    fn text(&mut self, max: usize, what: &str) -> anyhow::Result<String> {
        String::from_utf8(self.bytes(max, what)?).with_context(|| format!("a {what} not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            subject: format!("$KV.b.k{seq}"),
            headers: vec![("KV-Operation".into(), "DEL".into())],
            payload: vec![seq as u8; 3],
        }
    }

    #[test]
    fn frames_read_back_as_written() {
        let mut w = Writer::new(Vec::new()).unwrap();
        for seq in 1..=3 {
            w.write(&frame(seq)).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = Reader::new(&bytes[..]).unwrap();
        for seq in 1..=3 {
            assert_eq!(r.next_frame().unwrap(), Some(frame(seq)));
        }
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn a_hostile_length_is_refused_before_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(1u64.to_be_bytes());
        bytes.extend(u32::MAX.to_be_bytes());
        let err = Reader::new(&bytes[..]).unwrap().next_frame().unwrap_err();
        assert!(
            format!("{err:#}").contains("subject of 4294967295"),
            "{err:#}"
        );
        let mut cut = Writer::new(Vec::new()).unwrap();
        cut.write(&frame(1)).unwrap();
        let cut = cut.finish().unwrap();
        let err = Reader::new(&cut[..cut.len() - 1])
            .unwrap()
            .next_frame()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("cut short in a payload"),
            "{err:#}"
        );
        assert!(Reader::new(&b"GARBAGE!"[..]).is_err());
    }
}
