//! The frames themselves and their byte encoding.
//!
//! A frame on the wire is `u32 length (big endian) | u8 kind | payload`, where length counts
//! the kind byte and the payload. Integers are big endian, strings are `u32 length | UTF-8`,
//! hashes are 32 raw bytes. Decoding checks every length against what is left, so any byte
//! string decodes to a frame or an error, never a panic.

use crate::ProtocolError;

/// A BLAKE3 digest as carried on the wire.
pub type Hash = [u8; 32];

/// Largest frame accepted, so that a corrupt length cannot make a peer allocate gigabytes.
pub const MAX_FRAME: usize = 16 << 20;

/// What the collector already holds of an offered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Have {
    /// Nothing usable: send the whole file.
    Nothing,
    /// The same bytes (size and BLAKE3 match): send nothing.
    Same,
    /// A partial copy of `len` bytes whose BLAKE3 is `hash`; if the sender's first `len`
    /// bytes hash the same, only the rest needs to travel.
    Prefix {
        /// Bytes held.
        len: u64,
        /// BLAKE3 of those bytes.
        hash: Hash,
    },
    /// A different version of the file: its rsync signature (librsync format), so that the
    /// sender can send a delta against it in [`Frame::Delta`] frames instead of the bytes.
    Delta {
        /// The serialized signature.
        signature: Vec<u8>,
    },
}

/// Machine-readable reason carried by [`Frame::Nack`] and [`Frame::Error`], so the agent
/// can tell what to retry from what to hold for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A path was absolute, escaped the data root or was otherwise unusable. Hold.
    PathRefused,
    /// The received bytes did not hash to the offered BLAKE3. Send again.
    HashMismatch,
    /// The collector service did not answer. Retry later.
    ServiceUnavailable,
    /// The submission was refused (unknown workflow, missing files …). Hold.
    SubmitRefused,
    /// The collector's disk failed. Retry later.
    Io,
    /// The peer broke the protocol. Reconnect.
    Protocol,
    /// A code from a newer peer.
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::PathRefused => 1,
            ErrorCode::HashMismatch => 2,
            ErrorCode::ServiceUnavailable => 3,
            ErrorCode::SubmitRefused => 4,
            ErrorCode::Io => 5,
            ErrorCode::Protocol => 6,
            ErrorCode::Other(n) => n,
        }
    }
    fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::PathRefused,
            2 => ErrorCode::HashMismatch,
            3 => ErrorCode::ServiceUnavailable,
            4 => ErrorCode::SubmitRefused,
            5 => ErrorCode::Io,
            6 => ErrorCode::Protocol,
            n => ErrorCode::Other(n),
        }
    }
    /// Whether trying the same thing later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::HashMismatch
                | ErrorCode::ServiceUnavailable
                | ErrorCode::Io
                | ErrorCode::Protocol
        )
    }
}

/// One file of a submission, as the collector must hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the data root.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// BLAKE3.
    pub hash: Hash,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent → collector, first frame after the magic: who is asking, which version.
    Hello {
        /// Protocol version the agent speaks.
        version: u16,
        /// Free text (host, program version) for the collector's logs.
        client: String,
        /// The beamline this agent serves (`[agent] name`): the collector files everything
        /// it sends under this name.
        beamline: String,
    },
    /// Collector → agent: the handshake is accepted.
    Welcome {
        /// Protocol version the collector speaks.
        version: u16,
        /// Free text for the agent's logs.
        server: String,
    },
    /// Agent → collector: a file the agent wants the collector to hold.
    Offer {
        /// The agent's handle for this file within the connection.
        id: u64,
        /// Relative path under the data root.
        path: String,
        /// Bytes.
        size: u64,
        /// BLAKE3 of the whole file.
        hash: Hash,
    },
    /// Collector → agent: answer to an offer.
    HaveReply {
        /// The offer's id.
        id: u64,
        /// What the collector holds.
        have: Have,
    },
    /// Agent → collector: bytes of a file at an offset.
    Data {
        /// The offer's id.
        id: u64,
        /// Where these bytes go.
        offset: u64,
        /// The bytes (at most one chunk).
        bytes: Vec<u8>,
    },
    /// Agent → collector: bytes of a file at an offset, zstd-compressed (sent only when that
    /// saves enough to pay for itself).
    DataZ {
        /// The offer's id.
        id: u64,
        /// Where these bytes go.
        offset: u64,
        /// Length once decompressed (at most one chunk).
        raw_len: u32,
        /// The compressed bytes.
        bytes: Vec<u8>,
    },
    /// Agent → collector: a piece of an rsync delta against the signature the collector sent.
    Delta {
        /// The offer's id.
        id: u64,
        /// The next bytes of the delta.
        bytes: Vec<u8>,
    },
    /// Agent → collector: the delta bytes since the last cut form a whole rsync delta, the
    /// next part of the file; apply it now. A large file's delta comes in parts so that the
    /// agent computes them on several cores and the collector applies one while the next is
    /// computed.
    DeltaCut {
        /// The offer's id.
        id: u64,
    },
    /// Agent → collector: every byte of the file has been sent.
    Done {
        /// The offer's id.
        id: u64,
    },
    /// Agent → collector: forget this file (it changed while being read).
    Abort {
        /// The offer's id.
        id: u64,
        /// Why, for the collector's log.
        reason: String,
    },
    /// Collector → agent: the file is in place, verified and durable.
    Ack {
        /// The offer's id.
        id: u64,
    },
    /// Collector → agent: the file could not be taken.
    Nack {
        /// The offer's id.
        id: u64,
        /// Kind of failure.
        code: ErrorCode,
        /// What went wrong, for a person.
        reason: String,
    },
    /// Agent → collector: every file of this stack version is sent; build its DAG.
    Submit {
        /// Stack path relative to the data root.
        stack: String,
        /// Version (starts at 1; files arriving after submission make the next).
        version: u32,
        /// Workflow to build.
        workflow: String,
        /// The files that make up this version.
        files: Vec<FileEntry>,
        /// Whether older versions' unstarted jobs keep running (`on_change = "resubmit"`);
        /// by default a new version supersedes them. On the wire a trailing byte, sent only
        /// when set, so a collector that knows no such byte still takes the usual case.
        keep_older: bool,
        /// A streamed stack's sections so far (bit 1 of the trailing byte): the collector runs
        /// the work they allow (the pairs of whole chunks) while the detector writes the rest;
        /// the version that seals the stack reuses it.
        partial: bool,
    },
    /// Collector → agent: the service accepted the stack.
    Accepted {
        /// Stack path.
        stack: String,
        /// Version.
        version: u32,
        /// The service's id for this stack version.
        remote_id: u64,
        /// False when this exact version had been submitted before.
        created: bool,
        /// Jobs in its DAG.
        jobs: u32,
    },
    /// Either way: a request failed, or the connection is about to close.
    Error {
        /// Kind of failure.
        code: ErrorCode,
        /// What went wrong and what to do.
        message: String,
    },
    /// Agent → collector: this stack's folder disappeared at the beamline before it was ever
    /// submitted; remove the files of it that arrived. Refused for a stack the service knows.
    Discard {
        /// Stack path relative to the data root.
        stack: String,
        /// The files of it sent so far, relative to the data root.
        files: Vec<String>,
    },
    /// Collector → agent: the partial copy is gone.
    Discarded {
        /// Stack path.
        stack: String,
        /// Files removed (those already absent are not counted).
        removed: u32,
    },
    /// Agent → collector: nothing more; close cleanly.
    Bye,
}

impl Frame {
    /// A submission's trailing flags byte read into its fields (others pass through).
    fn with_flags(self, flags: u8) -> Frame {
        match self {
            Frame::Submit {
                stack,
                version,
                workflow,
                files,
                ..
            } => Frame::Submit {
                stack,
                version,
                workflow,
                files,
                keep_older: flags & 1 != 0,
                partial: flags & 2 != 0,
            },
            other => other,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::Welcome { .. } => 2,
            Frame::Offer { .. } => 3,
            Frame::HaveReply { .. } => 4,
            Frame::Data { .. } => 5,
            Frame::Done { .. } => 6,
            Frame::Abort { .. } => 7,
            Frame::Ack { .. } => 8,
            Frame::Nack { .. } => 9,
            Frame::Submit { .. } => 10,
            Frame::Accepted { .. } => 11,
            Frame::Error { .. } => 12,
            Frame::Bye => 13,
            Frame::Delta { .. } => 14,
            Frame::DataZ { .. } => 15,
            Frame::DeltaCut { .. } => 16,
            Frame::Discard { .. } => 17,
            Frame::Discarded { .. } => 18,
        }
    }

    /// The whole frame, length prefix included, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(match self {
            Frame::Data { bytes, .. } => bytes.len() + 32,
            _ => 64,
        }));
        w.u32(0);
        w.u8(self.kind());
        match self {
            Frame::Hello {
                version,
                client,
                beamline,
            } => {
                w.u16(*version);
                w.str(client);
                w.str(beamline);
            }
            Frame::Welcome { version, server } => {
                w.u16(*version);
                w.str(server);
            }
            Frame::Offer {
                id,
                path,
                size,
                hash,
            } => {
                w.u64(*id);
                w.str(path);
                w.u64(*size);
                w.hash(hash);
            }
            Frame::HaveReply { id, have } => {
                w.u64(*id);
                w.have(have);
            }
            Frame::Data { id, offset, bytes } => {
                w.u64(*id);
                w.u64(*offset);
                w.bytes(bytes);
            }
            Frame::Done { id } | Frame::Ack { id } | Frame::DeltaCut { id } => w.u64(*id),
            Frame::Delta { id, bytes } => {
                w.u64(*id);
                w.bytes(bytes);
            }
            Frame::DataZ {
                id,
                offset,
                raw_len,
                bytes,
            } => {
                w.u64(*id);
                w.u64(*offset);
                w.u32(*raw_len);
                w.bytes(bytes);
            }
            Frame::Abort { id, reason } => {
                w.u64(*id);
                w.str(reason);
            }
            Frame::Nack { id, code, reason } => {
                w.u64(*id);
                w.u16(code.to_u16());
                w.str(reason);
            }
            Frame::Submit {
                stack,
                version,
                workflow,
                files,
                keep_older,
                partial,
            } => {
                w.str(stack);
                w.u32(*version);
                w.str(workflow);
                w.entries(files);
                let flags = u8::from(*keep_older) | (u8::from(*partial) << 1);
                if flags != 0 {
                    w.u8(flags);
                }
            }
            Frame::Accepted {
                stack,
                version,
                remote_id,
                created,
                jobs,
            } => {
                w.str(stack);
                w.u32(*version);
                w.u64(*remote_id);
                w.u8(*created as u8);
                w.u32(*jobs);
            }
            Frame::Error { code, message } => {
                w.u16(code.to_u16());
                w.str(message);
            }
            Frame::Discard { stack, files } => {
                w.str(stack);
                w.strs(files);
            }
            Frame::Discarded { stack, removed } => {
                w.str(stack);
                w.u32(*removed);
            }
            Frame::Bye => {}
        }
        let len = (w.0.len() - 4) as u32;
        w.0[..4].copy_from_slice(&len.to_be_bytes());
        w.0
    }

    /// Like [`Frame::decode`], but takes the body by value so that a data frame's bytes are
    /// moved rather than copied (bulk data passes through here).
    pub fn decode_owned(mut body: Vec<u8>) -> Result<Frame, ProtocolError> {
        const HEAD: usize = 1 + 8 + 8 + 4;
        if body.first() == Some(&5) && body.len() >= HEAD {
            let mut r = Reader(&body[1..HEAD]);
            let (id, offset, len) = (r.u64()?, r.u64()?, r.u32()? as usize);
            if body.len() - HEAD != len {
                return Err(ProtocolError::Malformed(format!(
                    "data frame says {len} bytes but carries {}",
                    body.len() - HEAD
                )));
            }
            body.drain(..HEAD);
            return Ok(Frame::Data {
                id,
                offset,
                bytes: body,
            });
        }
        Frame::decode(&body)
    }

    /// Decodes the part after the length prefix (kind byte and payload).
    pub fn decode(body: &[u8]) -> Result<Frame, ProtocolError> {
        let mut r = Reader(body);
        let kind = r.u8()?;
        let f = match kind {
            1 => Frame::Hello {
                version: r.u16()?,
                client: r.str()?,
                beamline: r.str()?,
            },
            2 => Frame::Welcome {
                version: r.u16()?,
                server: r.str()?,
            },
            3 => Frame::Offer {
                id: r.u64()?,
                path: r.str()?,
                size: r.u64()?,
                hash: r.hash()?,
            },
            4 => Frame::HaveReply {
                id: r.u64()?,
                have: r.have()?,
            },
            5 => Frame::Data {
                id: r.u64()?,
                offset: r.u64()?,
                bytes: r.bytes()?,
            },
            6 => Frame::Done { id: r.u64()? },
            7 => Frame::Abort {
                id: r.u64()?,
                reason: r.str()?,
            },
            8 => Frame::Ack { id: r.u64()? },
            9 => Frame::Nack {
                id: r.u64()?,
                code: ErrorCode::from_u16(r.u16()?),
                reason: r.str()?,
            },
            10 => Frame::Submit {
                stack: r.str()?,
                version: r.u32()?,
                workflow: r.str()?,
                files: r.entries()?,
                keep_older: false,
                partial: false,
            }
            .with_flags(if r.0.is_empty() { 0 } else { r.u8()? }),
            11 => Frame::Accepted {
                stack: r.str()?,
                version: r.u32()?,
                remote_id: r.u64()?,
                created: r.u8()? != 0,
                jobs: r.u32()?,
            },
            12 => Frame::Error {
                code: ErrorCode::from_u16(r.u16()?),
                message: r.str()?,
            },
            13 => Frame::Bye,
            14 => Frame::Delta {
                id: r.u64()?,
                bytes: r.bytes()?,
            },
            16 => Frame::DeltaCut { id: r.u64()? },
            15 => Frame::DataZ {
                id: r.u64()?,
                offset: r.u64()?,
                raw_len: r.u32()?,
                bytes: r.bytes()?,
            },
            17 => Frame::Discard {
                stack: r.str()?,
                files: r.strs()?,
            },
            18 => Frame::Discarded {
                stack: r.str()?,
                removed: r.u32()?,
            },
            n => return Err(ProtocolError::Malformed(format!("unknown frame kind {n}"))),
        };
        if !r.0.is_empty() {
            return Err(ProtocolError::Malformed(format!(
                "{} stray bytes after frame kind {kind}",
                r.0.len()
            )));
        }
        Ok(f)
    }
}

/// The length prefix and header of a data frame carrying `len` bytes, so that senders can
/// write the bytes straight from their read buffer instead of copying them into a frame.
pub fn data_header(id: u64, offset: u64, len: usize) -> [u8; 25] {
    let mut h = [0u8; 25];
    h[..4].copy_from_slice(&((1 + 8 + 8 + 4 + len) as u32).to_be_bytes());
    h[4] = 5;
    h[5..13].copy_from_slice(&id.to_be_bytes());
    h[13..21].copy_from_slice(&offset.to_be_bytes());
    h[21..25].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn hash(&mut self, h: &Hash) {
        self.0.extend_from_slice(h);
    }
    fn have(&mut self, have: &Have) {
        match have {
            Have::Nothing => self.u8(0),
            Have::Same => self.u8(1),
            Have::Prefix { len, hash } => {
                self.u8(2);
                self.u64(*len);
                self.hash(hash);
            }
            Have::Delta { signature } => {
                self.u8(3);
                self.bytes(signature);
            }
        }
    }
    fn entries(&mut self, files: &[FileEntry]) {
        self.u32(files.len() as u32);
        for f in files {
            self.str(&f.path);
            self.u64(f.size);
            self.hash(&f.hash);
        }
    }
    fn strs(&mut self, all: &[String]) {
        self.u32(all.len() as u32);
        for s in all {
            self.str(s);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(ProtocolError::Malformed(format!(
                "frame ends early: wanted {n} more bytes, {} left",
                self.0.len()
            )));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("took 2"),
        ))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("took 4"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("took 8"),
        ))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ProtocolError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, ProtocolError> {
        String::from_utf8(self.bytes()?)
            .map_err(|_| ProtocolError::Malformed("a string is not UTF-8".into()))
    }
    fn hash(&mut self) -> Result<Hash, ProtocolError> {
        Ok(self.take(32)?.try_into().expect("took 32"))
    }
    fn have(&mut self) -> Result<Have, ProtocolError> {
        Ok(match self.u8()? {
            0 => Have::Nothing,
            1 => Have::Same,
            2 => Have::Prefix {
                len: self.u64()?,
                hash: self.hash()?,
            },
            3 => Have::Delta {
                signature: self.bytes()?,
            },
            n => {
                return Err(ProtocolError::Malformed(format!(
                    "unknown 'have' variant {n}"
                )))
            }
        })
    }
    /// A count, refused when the rest of the body cannot hold that many items of at least
    /// `least` bytes each (a peer cannot make this side reserve memory it never sends).
    fn count(&mut self, least: usize, what: &str) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / least {
            return Err(ProtocolError::Malformed(format!(
                "{what} claims {n} files in {} bytes",
                self.0.len()
            )));
        }
        Ok(n)
    }
    fn entries(&mut self) -> Result<Vec<FileEntry>, ProtocolError> {
        // each entry takes at least 4 + 8 + 32 bytes
        let n = self.count(44, "submission")?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            files.push(FileEntry {
                path: self.str()?,
                size: self.u64()?,
                hash: self.hash()?,
            });
        }
        Ok(files)
    }
    fn strs(&mut self) -> Result<Vec<String>, ProtocolError> {
        // each name takes at least its 4-byte length
        let n = self.count(4, "discard")?;
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.str()?);
        }
        Ok(all)
    }
}
