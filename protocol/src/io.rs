//! Reading and writing frames on byte streams. Both ends speak them blocking: `serve` in a
//! plain stdin/stdout loop, the agent on the threads its transfers run on.

use crate::{Frame, ProtocolError, MAGIC, MAX_FRAME};
use std::io::{Read, Write};

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
pub fn read_magic<R: Read>(r: &mut R) -> Result<(), ProtocolError> {
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
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, ProtocolError> {
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
pub fn write_data<W: Write>(
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
pub fn write_frame<W: Write>(w: &mut W, f: &Frame) -> Result<(), ProtocolError> {
    w.write_all(&f.encode())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_alone_is_accepted() {
        read_magic(&mut &MAGIC[..]).unwrap();
    }

    #[test]
    fn text_before_magic_is_reported() {
        let mut s = b"Welcome to Theta!\n".to_vec();
        s.extend_from_slice(MAGIC);
        match read_magic(&mut &s[..]) {
            Err(ProtocolError::Garbage { text }) => assert_eq!(text, "Welcome to Theta!\n"),
            other => panic!("{other:?}"),
        }
        let e = read_magic(&mut &b"bash: beamflow-collector: command not found\n"[..]).unwrap_err();
        assert!(e.to_string().contains("command not found"), "{e}");
    }

    #[test]
    fn a_stream_round_trips() {
        let f = Frame::Data {
            id: 1,
            offset: 2,
            bytes: vec![7; 1000],
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &f).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(f));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let e = read_frame(&mut &[0xff, 0xff, 0xff, 0xff, 1][..]).unwrap_err();
        assert!(matches!(e, ProtocolError::TooLarge(_)));
    }
}
