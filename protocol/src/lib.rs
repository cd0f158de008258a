//! The wire protocol between `beamflow-agent` and `beamflow-collector serve`.
//!
//! It changes rarely and carefully, so it lives in its own crate. A connection starts with
//! the collector writing [`MAGIC`]; whatever a remote shell printed before it (an rc file's
//! greeting, say) is reported as such rather than misread as a frame. Then the agent sends
//! [`Frame::Hello`], the collector answers [`Frame::Welcome`], and frames flow both ways.

pub mod api;
pub mod doctor;
mod frame;
mod io;
mod path;
pub mod states;
mod table;

pub use frame::{data_header, ErrorCode, FileEntry, Frame, Hash, Have, MAX_FRAME};
pub use io::{read_frame, read_magic, write_data, write_frame};
/// The commit the programs were built from (12 hex digits, or `unknown` outside a checkout).
pub const COMMIT: &str = env!("BEAMFLOW_COMMIT");

/// The version and the commit the programs were built from (`0.1.0 (1a2b3c4d5e6f)`), what
/// `--version` prints on both programs.
pub const VERSION_AND_COMMIT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BEAMFLOW_COMMIT"),
    ")"
);

pub use path::{normalize_rel_path, reserved, work_rel, PathError, WORK_VERSION_PREFIX};
pub use table::table;

/// Bytes the collector writes before anything else. Text printed by a shell cannot look
/// like this: it starts with a NUL.
pub const MAGIC: &[u8; 8] = b"\0BMFLOW\n";

/// The protocol version this build speaks. Peers with another version are refused with a
/// message naming both.
pub const VERSION: u16 = 3;

/// Why a byte stream could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying pipe or socket failed.
    #[error("link i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream in the middle of a frame.
    #[error("the far end closed the link in the middle of a frame")]
    Truncated,
    /// A frame's contents were not valid.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame claimed more bytes than any frame may have.
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit; the stream is corrupt or the peer is not beamflow")]
    TooLarge(usize),
    /// Something other than the magic arrived first.
    #[error("the far end printed text before the protocol started: {text:?}. A login script (e.g. ~/.bashrc) is writing to stdout in non-interactive shells; make it quiet, for example by starting it with `[[ $- == *i* ]] || return`")]
    Garbage {
        /// What was printed (at most a few KiB, lossily decoded).
        text: String,
    },
    /// The far end closed before the magic; it probably failed to start.
    #[error("the far end closed the link before the handshake{}", if text.is_empty() { String::new() } else { format!(" after printing {text:?}") })]
    ClosedBeforeHandshake {
        /// Whatever it printed.
        text: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                client: "agent".into(),
                beamline: "bl-1".into(),
            },
            Frame::Welcome {
                version: 1,
                server: "collector".into(),
            },
            Frame::Offer {
                id: 7,
                path: "a/b c/S_ä.tif".into(),
                size: 123,
                hash: [9; 32],
            },
            Frame::HaveReply {
                id: 7,
                have: Have::Nothing,
            },
            Frame::HaveReply {
                id: 7,
                have: Have::Delta {
                    signature: vec![1, 2, 3],
                },
            },
            Frame::Delta {
                id: 7,
                bytes: vec![9; 10],
            },
            Frame::DeltaCut { id: 7 },
            Frame::DataZ {
                id: 7,
                offset: 3,
                raw_len: 100,
                bytes: vec![1; 5],
            },
            Frame::HaveReply {
                id: 7,
                have: Have::Same,
            },
            Frame::HaveReply {
                id: 7,
                have: Have::Prefix {
                    len: 5,
                    hash: [1; 32],
                },
            },
            Frame::Data {
                id: 7,
                offset: 99,
                bytes: vec![1, 2, 3],
            },
            Frame::Done { id: 7 },
            Frame::Abort {
                id: 7,
                reason: "changed".into(),
            },
            Frame::Ack { id: 7 },
            Frame::Nack {
                id: 7,
                code: ErrorCode::PathRefused,
                reason: "no".into(),
            },
            Frame::Submit {
                stack: "s".into(),
                version: 2,
                workflow: "aligntk".into(),
                files: vec![FileEntry {
                    path: "s/a.tif".into(),
                    size: 1,
                    hash: [3; 32],
                }],
                keep_older: false,
                partial: false,
            },
            Frame::Submit {
                stack: "s".into(),
                version: 3,
                workflow: "aligntk".into(),
                files: Vec::new(),
                keep_older: true,
                partial: false,
            },
            Frame::Submit {
                stack: "s".into(),
                version: 4,
                workflow: "aligntk".into(),
                files: Vec::new(),
                keep_older: false,
                partial: true,
            },
            Frame::Accepted {
                stack: "s".into(),
                version: 2,
                remote_id: 4,
                created: true,
                jobs: 3,
            },
            Frame::Error {
                code: ErrorCode::Other(77),
                message: "x".into(),
            },
            Frame::Discard {
                stack: "s".into(),
                files: vec!["s/a.tif".into(), "s/$(id) b.tif".into()],
            },
            Frame::Discarded {
                stack: "s".into(),
                removed: 2,
            },
            Frame::Bye,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all_frames() {
            let bytes = f.encode();
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4);
            assert_eq!(Frame::decode(&bytes[4..]).unwrap(), f);
        }
    }

    #[test]
    fn data_written_without_copy_reads_back() {
        let mut out = Vec::new();
        write_data(&mut out, 3, 9, b"abcdef").unwrap();
        assert_eq!(
            out,
            Frame::Data {
                id: 3,
                offset: 9,
                bytes: b"abcdef".to_vec()
            }
            .encode()
        );
        let f = read_frame(&mut &out[..]).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Data {
                id: 3,
                offset: 9,
                bytes: b"abcdef".to_vec()
            }
        );
        // a data frame whose inner length disagrees with the frame length is refused
        let mut bad = out.clone();
        bad[24] = 7;
        assert!(read_frame(&mut &bad[..]).is_err());
    }

    #[test]
    fn truncated_frames_are_errors() {
        for f in all_frames() {
            let bytes = f.encode();
            for cut in 4..bytes.len() {
                // a submission's trailing flag is optional: without it, it is the usual
                // submission (the frame's length prefix is what rules out a cut frame)
                if matches!(f, Frame::Submit { keep_older, partial, .. } if keep_older || partial)
                    && cut == bytes.len() - 1
                {
                    let Frame::Submit {
                        keep_older,
                        partial,
                        ..
                    } = Frame::decode(&bytes[4..cut]).unwrap()
                    else {
                        panic!("not a submission")
                    };
                    assert!(!keep_older && !partial);
                    continue;
                }
                assert!(Frame::decode(&bytes[4..cut]).is_err(), "{f:?} cut at {cut}");
            }
        }
    }

    proptest! {
        #[test]
        fn decoding_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::decode(&body);
        }

        #[test]
        fn stream_reading_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = &body[..];
            while let Ok(Some(_)) = read_frame(&mut r) {}
        }
    }
}
