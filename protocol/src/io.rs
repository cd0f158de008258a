//! Reading and writing frames on byte streams: blocking for `serve` (a plain stdin/stdout
//! loop), async for the agent (which juggles many things in one tokio loop).

use crate::{Frame, ProtocolError, MAGIC, MAX_FRAME};
use std::io::{Read, Write};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much pre-handshake output is examined before giving up on finding the magic.
const MAGIC_SEARCH_LIMIT: usize = 64 << 10;

fn check_magic(buf: &[u8]) -> Option<Result<(), ProtocolError>> {
    if buf.ends_with(MAGIC) {
        let before = &buf[..buf.len() - MAGIC.len()];
        return Some(if before.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Garbage {
                text: String::from_utf8_lossy(before).into_owned(),
            })
        });
    }
    if buf.len() >= MAGIC_SEARCH_LIMIT {
        return Some(Err(ProtocolError::Garbage {
            text: String::from_utf8_lossy(&buf[..4096]).into_owned(),
        }));
    }
    None
}

fn closed(buf: &[u8]) -> ProtocolError {
    ProtocolError::ClosedBeforeHandshake {
        text: String::from_utf8_lossy(buf).trim().to_string(),
    }
}

/// Waits for the collector's magic. Text before it becomes [`ProtocolError::Garbage`].
pub async fn read_magic<R: AsyncRead + Unpin>(r: &mut R) -> Result<(), ProtocolError> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte).await? == 0 {
            return Err(closed(&buf));
        }
        buf.push(byte[0]);
        if let Some(res) = check_magic(&buf) {
            return res;
        }
    }
}

/// Blocking twin of [`read_magic`].
pub fn read_magic_sync<R: Read>(r: &mut R) -> Result<(), ProtocolError> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return Err(closed(&buf));
        }
        buf.push(byte[0]);
        if let Some(res) = check_magic(&buf) {
            return res;
        }
    }
}

fn frame_len(head: [u8; 4]) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME + 64 {
        return Err(ProtocolError::TooLarge(len));
    }
    if len == 0 {
        return Err(ProtocolError::Malformed("empty frame".into()));
    }
    Ok(len)
}

/// Reads one frame; `Ok(None)` means the peer closed cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ProtocolError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::Truncated)
            };
        }
        got += n;
    }
    let mut body = vec![0u8; frame_len(head)?];
    r.read_exact(&mut body).await.map_err(eof_is_truncation)?;
    Frame::decode(&body).map(Some)
}

/// Blocking twin of [`read_frame`].
pub fn read_frame_sync<R: Read>(r: &mut R) -> Result<Option<Frame>, ProtocolError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::Truncated)
            };
        }
        got += n;
    }
    let mut body = vec![0u8; frame_len(head)?];
    r.read_exact(&mut body).map_err(eof_is_truncation)?;
    Frame::decode_owned(body).map(Some)
}

/// Writes a data frame without copying `bytes` into a frame first.
pub fn write_data_sync<W: Write>(
    w: &mut W,
    id: u64,
    offset: u64,
    bytes: &[u8],
) -> Result<(), ProtocolError> {
    w.write_all(&crate::frame::data_header(id, offset, bytes.len()))?;
    w.write_all(bytes)?;
    Ok(())
}

fn eof_is_truncation(e: std::io::Error) -> ProtocolError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::Truncated
    } else {
        ProtocolError::Io(e)
    }
}

/// Writes one frame (not flushed: callers flush when they wait for an answer).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), ProtocolError> {
    w.write_all(&f.encode()).await?;
    Ok(())
}

/// Blocking twin of [`write_frame`].
pub fn write_frame_sync<W: Write>(w: &mut W, f: &Frame) -> Result<(), ProtocolError> {
    w.write_all(&f.encode())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_alone_is_accepted() {
        read_magic_sync(&mut &MAGIC[..]).unwrap();
    }

    #[test]
    fn text_before_magic_is_reported() {
        let mut s = b"Welcome to Theta!\n".to_vec();
        s.extend_from_slice(MAGIC);
        match read_magic_sync(&mut &s[..]) {
            Err(ProtocolError::Garbage { text }) => assert_eq!(text, "Welcome to Theta!\n"),
            other => panic!("{other:?}"),
        }
        let e = read_magic_sync(&mut &b"bash: beamflow-collector: command not found\n"[..])
            .unwrap_err();
        assert!(e.to_string().contains("command not found"), "{e}");
    }

    #[tokio::test]
    async fn async_stream_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let f = Frame::Data {
            id: 1,
            offset: 2,
            bytes: vec![7; 1000],
        };
        write_frame(&mut a, &f).await.unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b).await.unwrap(), Some(f));
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let e = read_frame_sync(&mut &[0xff, 0xff, 0xff, 0xff, 1][..]).unwrap_err();
        assert!(matches!(e, ProtocolError::TooLarge(_)));
    }
}
