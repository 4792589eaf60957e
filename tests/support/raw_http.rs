//! HTTP/1.1 written by hand on a loopback TCP connection: for the tests of
//! what a client that does not behave (trickles bytes, holds connections,
//! declares a body it never sends) gets from the server.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::curl::{parse, Response};

/// A connection to `addr` (`host:port`).
pub fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

/// A GET of `path` that keeps the connection open.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: cbs.test\r\n\r\n")
}

/// Writes `request` and reads its response, or `None` when none came
/// whole within `within`.
pub fn exchange(stream: &mut TcpStream, request: &str, within: Duration) -> Option<Response> {
    stream
        .write_all(request.as_bytes())
        .expect("the request is sent");
    response(stream, within)
}

/// The next response on `stream` (head, and a body of its
/// `Content-Length`), or `None` when none came whole within `within`.
pub fn response(stream: &mut TcpStream, within: Duration) -> Option<Response> {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(length) = whole(&bytes) {
            return Some(parse(&String::from_utf8_lossy(&bytes[..length])));
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            _ => return None, // closed, or nothing more in time
        }
    }
}

/// The length of the first whole response in `bytes`, if there is one.
fn whole(bytes: &[u8]) -> Option<usize> {
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&bytes[..head]).to_ascii_lowercase();
    let body: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    (bytes.len() >= head + body).then_some(head + body)
}

/// Writes `start`, then one byte of `trickle` a second (cycling), until
/// the server closes the connection; returns how long after `start` that
/// was, or `None` when it is still open after `patience`.
pub fn trickle_until_closed(
    stream: &mut TcpStream,
    start: &[u8],
    trickle: &[u8],
    patience: Duration,
) -> Option<Duration> {
    let began = Instant::now();
    if stream.write_all(start).is_err() {
        return Some(began.elapsed());
    }
    let mut chunk = [0u8; 1024];
    for byte in trickle.iter().cycle() {
        if began.elapsed() > patience {
            return None;
        }
        // Reading for a second is the pace of the trickle, and sees the
        // server close (EOF or reset) as soon as it does.
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("a read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return Some(began.elapsed()),
            Ok(_) => continue, // an answer (408) before the close
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Some(began.elapsed()),
        }
        if stream.write_all(&[*byte]).is_err() {
            return Some(began.elapsed());
        }
    }
    None
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
