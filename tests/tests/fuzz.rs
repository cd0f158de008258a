//! A bounded fuzz run (about a minute in all) against the frame decoder and against the real
//! `beamflow-collector serve --stdio`: random and structured inputs, hostile paths, broken
//! frames. Any panic fails the test; so does a `serve` that dies of a signal, exits 101 or
//! hangs. The seed is printed first; `BEAMFLOW_FUZZ_SEED=N` replays a run and
//! `BEAMFLOW_FUZZ_SECS` changes its length (per part).

use beamflow_e2e::*;
use beamflow_protocol::{read_frame, ErrorCode, FileEntry, Frame, Have, VERSION};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max as u64 + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn seed() -> u64 {
    let s = std::env::var("BEAMFLOW_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("fuzz seed: {s} (replay with BEAMFLOW_FUZZ_SEED={s})");
    s
}

fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("BEAMFLOW_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    )
}

const PATHS: &[&str] = &[
    "s/a.tif",
    "s/b.tif",
    "s/$(id>PWNED).tif",
    "s/-x.tif",
    "s/a b\nc.tif",
    "../escape.tif",
    "/etc/passwd",
    "s/../../x",
    "s/./a.tif",
    "",
    ".",
    "s//a.tif",
    "evil/x/y.tif",
    "s/\0nul.tif",
    "deep/a/b/c/d/e/f.tif",
];

/// A number below `n`, or now and then one at the very top of its range (sums and ends
/// computed from such numbers must never wrap: "bytes at 18446744073709551614..2").
fn huge_or(r: &mut Rng, n: u64) -> u64 {
    match r.below(8) {
        0 => u64::MAX - r.below(4),
        1 => u64::MAX / 2 + r.below(3),
        _ => r.below(n),
    }
}

/// A frame an agent might send, or a broken one.
fn frame(r: &mut Rng) -> Frame {
    let id = r.below(6);
    let path = |r: &mut Rng| {
        if r.below(4) == 0 {
            String::from_utf8_lossy(&r.bytes(300)).into_owned()
        } else {
            r.pick(PATHS).to_string()
        }
    };
    match r.below(12) {
        0 => Frame::Offer {
            id,
            path: path(r),
            size: huge_or(r, 5000),
            hash: [r.next() as u8; 32],
        },
        1 | 2 => Frame::Data {
            id,
            offset: huge_or(r, 5000),
            bytes: r.bytes(3000),
        },
        3 => Frame::DataZ {
            id,
            offset: huge_or(r, 100),
            raw_len: r.below(1 << 26) as u32,
            bytes: r.bytes(200),
        },
        4 => Frame::Delta {
            id,
            bytes: r.bytes(500),
        },
        5 => Frame::DeltaCut { id },
        6 => Frame::Done { id },
        7 => Frame::Abort {
            id,
            reason: "fuzz".into(),
        },
        8 => Frame::Submit {
            stack: path(r),
            version: if r.below(8) == 0 {
                u32::MAX
            } else {
                r.below(3) as u32
            },
            workflow: r.pick(&["aligntk", "qa", "nope", ""]).to_string(),
            files: (0..r.below(4))
                .map(|_| FileEntry {
                    path: path(r),
                    size: huge_or(r, 100),
                    hash: [0; 32],
                })
                .collect(),
            keep_older: r.below(2) == 0,
            partial: r.below(2) == 0,
        },
        9 => Frame::Discard {
            stack: path(r),
            files: (0..r.below(4)).map(|_| path(r)).collect(),
        },
        10 => Frame::HaveReply {
            id,
            have: Have::Same,
        },
        _ => Frame::Error {
            code: ErrorCode::Other(r.below(100) as u16),
            message: "x".into(),
        },
    }
}

#[test]
fn the_frame_decoder_never_panics() {
    let mut r = Rng(seed());
    let start = Instant::now();
    let mut cases = 0u64;
    while start.elapsed() < budget() {
        cases += 1;
        let mut body = if r.below(2) == 0 {
            r.bytes(400)
        } else {
            let mut b = frame(&mut r).encode()[4..].to_vec();
            for _ in 0..r.below(4) {
                match r.below(3) {
                    0 if !b.is_empty() => {
                        let i = r.below(b.len() as u64) as usize;
                        b[i] = r.next() as u8;
                    }
                    1 => b.truncate(r.below(b.len() as u64 + 1) as usize),
                    _ => b.extend(r.bytes(8)),
                }
            }
            b
        };
        let copy = body.clone();
        let ok = std::panic::catch_unwind(|| {
            let _ = Frame::decode(&copy);
            let mut stream = (copy.len() as u32).to_be_bytes().to_vec();
            stream.extend(&copy);
            let _ = read_frame(&mut &stream[..]);
        });
        assert!(ok.is_ok(), "decoder panicked at case {cases}: {body:?}");
        body.clear();
    }
    eprintln!("decoder: {cases} inputs, no panic");
    assert!(cases > 1000, "only {cases} cases ran");
}

#[test]
fn serve_never_panics_on_what_arrives() {
    let site = Site::new("1s", "");
    let mut r = Rng(seed() ^ 0x5eed);
    let start = Instant::now();
    let mut cases = 0u64;
    while start.elapsed() < budget() {
        cases += 1;
        let case_seed = r.next() | 1;
        let mut c = Rng(case_seed);
        let mut input = Vec::new();
        if c.below(10) != 0 {
            input.extend(
                Frame::Hello {
                    version: if c.below(20) == 0 { 1 } else { VERSION },
                    client: "fuzz".into(),
                    beamline: c.pick(&["bl", "other", "../x", "", "a/b"]).to_string(),
                }
                .encode(),
            );
        }
        for _ in 0..c.below(40) {
            if c.below(15) == 0 {
                input.extend(c.bytes(64)); // raw garbage mid-stream
            } else {
                input.extend(frame(&mut c).encode());
            }
        }
        if c.below(2) == 0 {
            input.extend(Frame::Bye.encode());
        }
        let mut child = site
            .serve_stdio()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
        });
        let mut err = child.stderr.take().unwrap();
        let errs = std::thread::spawn(move || {
            let mut v = String::new();
            let _ = err.read_to_string(&mut v);
            v
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve hung on case seed {case_seed} (BEAMFLOW_FUZZ_SEED replays the run)");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let _ = writer.join();
        let _ = reader.join();
        let stderr = errs.join().unwrap_or_default();
        assert!(
            matches!(status.code(), Some(0 | 1)) && !stderr.contains("panicked"),
            "serve ended with {status} on case seed {case_seed}:\n{stderr}"
        );
    }
    // nothing escaped the data root
    let mut top: Vec<String> = std::fs::read_dir(&site.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert!(
        top.iter()
            .all(|t| ["beamflow.toml", "incoming", "remote", "state"].contains(&t.as_str())),
        "{top:?}"
    );
    assert!(!site.dir.parent().unwrap().join("escape.tif").exists());
    eprintln!("serve: {cases} sessions, no panic");
    assert!(cases > 50, "only {cases} sessions ran");
}
