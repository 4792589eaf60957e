//! Length-prefixed JSON frames: a 4-byte big-endian length, then that many
//! bytes of JSON. Shared by every process runtime (sidecars, the native
//! Python pool). Built on tokio-util's `LengthDelimitedCodec`, which refuses
//! an oversize frame from its announced length, before buffering its body.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, FramedRead, LengthDelimitedCodec};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("oversize frame: more than {max} bytes announced")]
    Oversize { max: usize },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Frames read from a process's stdout.
pub type FrameReader<R> = FramedRead<R, FrameCodec>;

/// Reads frames of at most `max` bytes from `reader`, buffered: a process
/// that writes many frames at once is read in few system calls.
pub fn reader<R: AsyncRead>(reader: R, max: usize) -> FrameReader<R> {
    FramedRead::with_capacity(reader, FrameCodec::new(max), 64 << 10)
}

/// The frame codec, reading frames of at most `max` bytes.
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: usize,
}

impl FrameCodec {
    pub fn new(max: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(4)
            .max_frame_length(max.min(u32::MAX as usize))
            .new_codec();
        Self { inner, max }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        self.inner.decode(src).map_err(|e| match e.kind() {
            // The codec's only InvalidData error: "frame size too big".
            std::io::ErrorKind::InvalidData => FrameError::Oversize { max: self.max },
            _ => FrameError::Io(e),
        })
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(src)? {
            None if !src.is_empty() => Err(FrameError::Truncated),
            frame => Ok(frame),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        Ok(self.inner.encode(body, dst)?)
    }
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: Bytes,
) -> Result<(), FrameError> {
    let mut buf = BytesMut::with_capacity(body.len() + 4);
    FrameCodec::new(usize::MAX).encode(body, &mut buf)?;
    writer.write_all(&buf).await?;
    Ok(writer.flush().await?)
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    const PING: &[u8] = br#"{"type":"ping","id":1}"#;

    async fn frames(bytes: &[u8], max: usize) -> Vec<Result<BytesMut, FrameError>> {
        reader(bytes, max).collect().await
    }

    #[tokio::test]
    async fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Bytes::from_static(PING))
            .await
            .unwrap();
        write_frame(&mut buf, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(&buf[..4], &(PING.len() as u32).to_be_bytes());
        let read = frames(&buf, 64).await;
        assert_eq!(read.len(), 2, "two frames, then a clean end");
        assert_eq!(&read[0].as_ref().unwrap()[..], PING);
        assert_eq!(&read[1].as_ref().unwrap()[..], b"{}");
    }

    #[tokio::test]
    async fn oversize_frames_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Bytes::from_static(PING))
            .await
            .unwrap();
        let read = frames(&buf, 4).await;
        assert!(matches!(read[0], Err(FrameError::Oversize { max: 4 })));
        // Refused from the length alone, before the body arrived.
        let read = frames(&buf[..4], 4).await;
        assert!(matches!(read[0], Err(FrameError::Oversize { .. })));
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_frame_is_truncated() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Bytes::from_static(PING))
            .await
            .unwrap();
        let read = frames(&buf[..10], 64).await;
        assert!(matches!(read[0], Err(FrameError::Truncated)), "{read:?}");
    }
}
