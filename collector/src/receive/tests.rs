//! Tests of the receiving end, speaking frames to `serve` in memory.
use super::*;

fn cfg(dir: &Path) -> Config {
    let mut c = Config::parse("", Path::new("t")).unwrap();
    c.collector.data_root = dir.join("root");
    c.collector.state_dir = dir.join("state");
    c
}

fn session(cfg: &Config, frames: &[Frame]) -> Vec<Frame> {
    let mut input = Frame::Hello {
        version: VERSION,
        client: "t".into(),
        beamline: "bl".into(),
    }
    .encode();
    for f in frames {
        input.extend(f.encode());
    }
    let mut out = Vec::new();
    let _ = serve(cfg, &input[..], &mut out);
    assert_eq!(&out[..8], MAGIC);
    let mut r = &out[8..];
    let mut got = Vec::new();
    while let Ok(Some(f)) = read_frame(&mut r) {
        got.push(f);
    }
    got.remove(0); // Welcome
    got
}

#[test]
fn paths_outside_the_root_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    for p in [
        "../evil",
        "/etc/passwd",
        "a/../../b",
        "s/.beamflow-v1/a.tif",
        "s/.beamflow-0123456789abcdef.part",
    ] {
        let got = session(
            &c,
            &[Frame::Offer {
                id: 1,
                path: p.into(),
                size: 1,
                hash: [0; 32],
            }],
        );
        assert!(
            matches!(
                &got[0],
                Frame::Nack {
                    code: ErrorCode::PathRefused,
                    ..
                }
            ),
            "{p}: {got:?}"
        );
    }
    // a symlink planted inside the root does not lead out either
    std::fs::create_dir_all(d.path().join("root/bl")).unwrap();
    std::os::unix::fs::symlink("/tmp", d.path().join("root/bl/link")).unwrap();
    let got = session(
        &c,
        &[Frame::Offer {
            id: 1,
            path: "link/x".into(),
            size: 1,
            hash: [0; 32],
        }],
    );
    assert!(
        matches!(
            &got[0],
            Frame::Nack {
                code: ErrorCode::PathRefused,
                ..
            }
        ),
        "{got:?}"
    );
}

#[test]
fn a_file_is_stored_verified_and_then_known() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    let body = b"hello tiff".to_vec();
    let hash = *blake3::hash(&body).as_bytes();
    let got = session(
        &c,
        &[
            Frame::Offer {
                id: 1,
                path: "s/a.tif".into(),
                size: body.len() as u64,
                hash,
            },
            Frame::Data {
                id: 1,
                offset: 0,
                bytes: body.clone(),
            },
            Frame::Done { id: 1 },
            Frame::Bye,
        ],
    );
    assert_eq!(
        got,
        vec![
            Frame::HaveReply {
                id: 1,
                have: Have::Nothing
            },
            Frame::Ack { id: 1 }
        ]
    );
    assert_eq!(
        std::fs::read(d.path().join("root/bl/s/a.tif")).unwrap(),
        body
    );
    let got = session(
        &c,
        &[Frame::Offer {
            id: 9,
            path: "s/a.tif".into(),
            size: body.len() as u64,
            hash,
        }],
    );
    assert_eq!(
        got,
        vec![Frame::HaveReply {
            id: 9,
            have: Have::Same
        }]
    );
}

#[test]
fn wrong_bytes_are_refused_and_not_stored() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    let got = session(
        &c,
        &[
            Frame::Offer {
                id: 1,
                path: "s/a.tif".into(),
                size: 3,
                hash: [7; 32],
            },
            Frame::Data {
                id: 1,
                offset: 0,
                bytes: b"abc".to_vec(),
            },
            Frame::Done { id: 1 },
            Frame::Bye,
        ],
    );
    assert!(
        matches!(
            &got[1],
            Frame::Nack {
                code: ErrorCode::HashMismatch,
                ..
            }
        ),
        "{got:?}"
    );
    assert!(!d.path().join("root/bl/s/a.tif").exists());
    assert!(!d
        .path()
        .join("root/bl/s")
        .join(super::temp_name("a.tif", "part"))
        .exists());
}

#[test]
fn a_partial_file_is_offered_as_a_prefix_and_resumed() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let hash = *blake3::hash(&body).as_bytes();
    std::fs::create_dir_all(d.path().join("root/bl/s")).unwrap();
    std::fs::write(
        d.path()
            .join("root/bl/s")
            .join(super::temp_name("a.tif", "part")),
        &body[..4000],
    )
    .unwrap();
    let got = session(
        &c,
        &[Frame::Offer {
            id: 1,
            path: "s/a.tif".into(),
            size: 10_000,
            hash,
        }],
    );
    assert_eq!(
        got[0],
        Frame::HaveReply {
            id: 1,
            have: Have::Prefix {
                len: 4000,
                hash: *blake3::hash(&body[..4000]).as_bytes()
            }
        }
    );
    let got = session(
        &c,
        &[
            Frame::Offer {
                id: 1,
                path: "s/a.tif".into(),
                size: 10_000,
                hash,
            },
            Frame::Data {
                id: 1,
                offset: 4000,
                bytes: body[4000..].to_vec(),
            },
            Frame::Done { id: 1 },
            Frame::Bye,
        ],
    );
    assert_eq!(got[1], Frame::Ack { id: 1 });
    assert_eq!(
        std::fs::read(d.path().join("root/bl/s/a.tif")).unwrap(),
        body
    );
}

#[test]
fn submitting_unverified_files_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    let got = session(
        &c,
        &[Frame::Submit {
            stack: "s".into(),
            version: 1,
            workflow: "aligntk".into(),
            files: vec![FileEntry {
                path: "s/a.tif".into(),
                size: 1,
                hash: [0; 32],
            }],
            keep_older: false,
            partial: false,
        }],
    );
    assert!(
        matches!(&got[0], Frame::Error { code: ErrorCode::SubmitRefused, message } if message.contains("not received")),
        "{got:?}"
    );
}

#[test]
fn a_file_refused_mid_stream_does_not_end_the_session() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path());
    let good = b"good bytes".to_vec();
    let got = session(
        &c,
        &[
            Frame::Offer {
                id: 1,
                path: "s/a.tif".into(),
                size: 4,
                hash: [7; 32],
            },
            Frame::Offer {
                id: 2,
                path: "s/b.tif".into(),
                size: good.len() as u64,
                hash: *blake3::hash(&good).as_bytes(),
            },
            // bytes past the offered size: refused, and the rest of the file is on its way
            Frame::Data {
                id: 1,
                offset: 0,
                bytes: b"too long".to_vec(),
            },
            Frame::Data {
                id: 1,
                offset: 8,
                bytes: b"more".to_vec(),
            },
            Frame::Done { id: 1 },
            Frame::Data {
                id: 2,
                offset: 0,
                bytes: good.clone(),
            },
            Frame::Done { id: 2 },
            Frame::Bye,
        ],
    );
    let nacks = got
        .iter()
        .filter(|f| matches!(f, Frame::Nack { id: 1, .. }))
        .count();
    assert_eq!(nacks, 1, "{got:?}");
    assert!(got.contains(&Frame::Ack { id: 2 }), "{got:?}");
    assert!(
        !got.iter().any(|f| matches!(f, Frame::Error { .. })),
        "{got:?}"
    );
    assert_eq!(
        std::fs::read(d.path().join("root/bl/s/b.tif")).unwrap(),
        good
    );
    assert!(!d.path().join("root/bl/s/a.tif").exists());
}

#[test]
fn a_round_of_many_files_is_stored_and_known_in_both_sync_modes() {
    for mode in [
        beamflow_config::SyncMode::Batch,
        beamflow_config::SyncMode::File,
    ] {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        c.collector.sync = mode;
        let files: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let offer = |i: usize, f: &Vec<u8>| Frame::Offer {
            id: i as u64,
            path: format!("s/{i}.tif"),
            size: f.len() as u64,
            hash: *blake3::hash(f).as_bytes(),
        };
        let mut frames: Vec<Frame> = files.iter().enumerate().map(|(i, f)| offer(i, f)).collect();
        for (i, f) in files.iter().enumerate() {
            frames.push(Frame::Data {
                id: i as u64,
                offset: 0,
                bytes: f.clone(),
            });
            frames.push(Frame::Done { id: i as u64 });
        }
        frames.push(Frame::Bye);
        let got = session(&c, &frames);
        for (i, f) in files.iter().enumerate() {
            assert!(
                got.contains(&Frame::Ack { id: i as u64 }),
                "{mode:?} {i}: {got:?}"
            );
            assert_eq!(
                &std::fs::read(d.path().join(format!("root/bl/s/{i}.tif"))).unwrap(),
                f
            );
        }
        // the next session finds them by their remembered hashes
        let again: Vec<Frame> = files.iter().enumerate().map(|(i, f)| offer(i, f)).collect();
        let got = session(&c, &again);
        assert!(
            got.iter().all(|f| matches!(
                f,
                Frame::HaveReply {
                    have: Have::Same,
                    ..
                }
            )),
            "{mode:?}: {got:?}"
        );
    }
}
