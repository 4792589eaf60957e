//! Length-prefixed JSON frames: a 4-byte big-endian length, then that many
//! bytes of JSON. Shared by every process runtime (sidecars, the native
//! Python pool).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("oversize frame: {len} bytes announced, at most {max} allowed")]
    Oversize { len: usize, max: usize },
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame body; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut head = [0u8; 4];
    match reader.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    Ok(Some(body))
}

/// Appends one frame (length prefix and body) to `buf`, for writing many
/// frames in one system call.
pub fn push_frame(buf: &mut Vec<u8>, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    Ok(())
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, br#"{"type":"ping","id":1}"#)
            .await
            .unwrap();
        write_frame(&mut buf, b"{}").await.unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r, 64).await.unwrap().unwrap(),
            br#"{"type":"ping","id":1}"#
        );
        assert_eq!(read_frame(&mut r, 64).await.unwrap().unwrap(), b"{}");
        assert!(read_frame(&mut r, 64).await.unwrap().is_none(), "clean end");

        let mut r = &buf[..];
        assert!(matches!(
            read_frame(&mut r, 4).await,
            Err(FrameError::Oversize { len: 22, max: 4 })
        ));
        let mut pushed = Vec::new();
        push_frame(&mut pushed, br#"{"type":"ping","id":1}"#).unwrap();
        push_frame(&mut pushed, b"{}").unwrap();
        assert_eq!(pushed, buf, "push_frame writes what write_frame writes");

        let mut r = &buf[..10];
        assert!(matches!(
            read_frame(&mut r, 64).await,
            Err(FrameError::Truncated)
        ));
    }
}
