//! One `serve` session: the handshake, then frames in until the agent says goodbye, with
//! answers written on the writer shared with the committer.

use super::*;

/// Writes one frame on the writer shared with the committer.
fn send<W: Write>(wr: &SharedWriter<W>, f: &Frame, flush: bool) -> Result<(), ProtocolError> {
    let mut w = wr.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *w, f)?;
    if flush {
        w.flush().map_err(ProtocolError::Io)?;
    }
    Ok(())
}

/// Answers a frame the receiver could not take: a Nack drops that file and the session goes
/// on; an Error (data for a file never offered) ends the session.
fn refuse<W: Write>(
    rx: &mut Receiver,
    wr: &SharedWriter<W>,
    id: u64,
    r: Result<(), Frame>,
) -> Result<(), ServeError> {
    let Err(f) = r else { return Ok(()) };
    rx.count_answer(&f);
    if let Frame::Nack { .. } = f {
        if let Some(inc) = rx.incoming.remove(&id) {
            // nothing of a refused file stays behind: its frames are dropped from here on
            drop(inc.file);
            let _ = std::fs::remove_file(&inc.part);
            if let Some(d) = inc.delta {
                d.discard();
            }
        }
        rx.refused.insert(id);
    }
    let fatal = matches!(f, Frame::Error { .. });
    send(wr, &f, fatal)?;
    if fatal {
        return Err(
            ProtocolError::Malformed("data for a file that was never offered".into()).into(),
        );
    }
    Ok(())
}

/// Runs one session over `input`/`output` until the agent says goodbye or goes away.
pub fn serve<R: Read, W: Write + Send>(
    cfg: &Config,
    input: R,
    output: W,
) -> Result<(), ServeError> {
    let mut rd = BufReader::with_capacity(4 << 20, input);
    let wr: SharedWriter<_> = Arc::new(Mutex::new(BufWriter::with_capacity(1 << 16, output)));
    {
        let mut w = wr.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(MAGIC).map_err(ProtocolError::Io)?;
        w.flush().map_err(ProtocolError::Io)?;
    }
    let Some(beamline) = hello(&mut rd, &wr)? else {
        return Ok(());
    };
    let mut rx = match Receiver::new(cfg, &beamline) {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                ServeError::Beamline(_) | ServeError::NotAllowed { .. } => ErrorCode::PathRefused,
                _ => ErrorCode::Io,
            };
            let f = Frame::Error {
                code,
                message: e.to_string(),
            };
            send(&wr, &f, true)?;
            return Err(e);
        }
    };
    let server = format!(
        "beamflow-collector {} data_root={}",
        env!("CARGO_PKG_VERSION"),
        rx.data_root.display()
    );
    let welcome = Frame::Welcome {
        version: VERSION,
        server,
    };
    send(&wr, &welcome, true)?;
    std::thread::scope(|scope| {
        let committer = Committer::start(
            scope,
            rx.fsync,
            cfg.collector.sync,
            wr.clone(),
            rx.verified.clone(),
        );
        let (tell, told) = std::sync::mpsc::channel();
        scope.spawn(move || report_received(cfg, told));
        let r = session(&mut rd, &wr, &mut rx, &committer, &tell);
        if rx.stats != crate::api::Received::default() {
            let _ = tell.send(rx.take_stats());
        }
        log_totals(&beamline, &rx, &r);
        r
        // dropping the committer and `tell` ends their threads; the scope waits for them
    })
}

/// The agent's hello: its beamline, or `None` when it left at once. Another protocol
/// version is told so and refused.
fn hello<R: Read, W: Write>(
    rd: &mut BufReader<R>,
    wr: &SharedWriter<W>,
) -> Result<Option<String>, ServeError> {
    match read_frame(rd)? {
        Some(Frame::Hello {
            version,
            client,
            beamline,
        }) if version == VERSION => {
            tracing::info!(%client, %beamline, "agent connected");
            Ok(Some(beamline))
        }
        Some(Frame::Hello { version, .. }) => {
            let e = ServeError::Version { theirs: version };
            let f = Frame::Error {
                code: ErrorCode::Protocol,
                message: e.to_string(),
            };
            send(wr, &f, true)?;
            Err(e)
        }
        Some(other) => {
            Err(ProtocolError::Malformed(format!("expected Hello, got {other:?}")).into())
        }
        None => Ok(None),
    }
}

/// One line for the session's end: what it received, resumed, found the same, refused.
fn log_totals(beamline: &str, rx: &Receiver, r: &Result<(), ServeError>) {
    let t = rx.totals();
    let how = match r {
        Ok(()) => "ended".to_string(),
        Err(e) => format!("ended: {e}"),
    };
    tracing::info!(
        %beamline,
        files = t.files,
        bytes = t.bytes,
        resumed = t.resumed,
        same = t.same,
        refused = t.refused,
        "session {how}: {} file(s) received ({} resumed or as deltas), {} answered \"same\", {} refused",
        t.files,
        t.resumed,
        t.same,
        t.refused
    );
}

/// Tells the service what arrived (its metrics), off the session's thread: counts sent
/// while a report is out are added up, and at most five reports go a second; what is left
/// when the session ends goes at once. A link kept open for hours is counted as it goes; a
/// service that is down misses them, nothing else.
fn report_received(cfg: &Config, told: std::sync::mpsc::Receiver<crate::api::Received>) {
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::{Duration, Instant};
    const EVERY: Duration = Duration::from_millis(200);
    let mut service = super::Service::new(&cfg.collector.state_dir, Some(Duration::from_secs(5)));
    let mut report = |sum: &crate::api::Received| {
        if let Err(e) = service.call(|c| c.received(sum)) {
            tracing::debug!("cannot report what this session received: {e}");
        }
    };
    let mut pending: Option<crate::api::Received> = None;
    let mut last: Option<Instant> = None;
    loop {
        let wait = match (&pending, last) {
            (None, _) => Duration::from_secs(3600),
            (Some(_), Some(at)) => (at + EVERY).saturating_duration_since(Instant::now()),
            (Some(_), None) => Duration::ZERO,
        };
        match told.recv_timeout(wait) {
            Ok(more) => {
                let sum = pending.get_or_insert_with(Default::default);
                sum.files += more.files;
                sum.bytes = sum.bytes.saturating_add(more.bytes);
                sum.verify_failures += more.verify_failures;
                sum.resumes += more.resumes;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if let Some(sum) = pending.take() {
                    report(&sum);
                }
                return;
            }
        }
        if pending.is_some() && last.is_none_or(|at| at.elapsed() >= EVERY) {
            if let Some(sum) = pending.take() {
                report(&sum);
            }
            last = Some(Instant::now());
        }
    }
}

/// The frames after the handshake.
fn session<R: Read, W: Write>(
    rd: &mut BufReader<R>,
    wr: &SharedWriter<W>,
    rx: &mut Receiver,
    committer: &Committer,
    tell: &std::sync::mpsc::Sender<crate::api::Received>,
) -> Result<(), ServeError> {
    loop {
        committer.coming(rx.incoming.len());
        for f in rx.pending.drain(..) {
            committer.push(f);
        }
        // nothing more buffered: the answers so far go out before we wait for more input
        if rd.buffer().is_empty() {
            if rx.stats != crate::api::Received::default() {
                let _ = tell.send(rx.take_stats());
            }
            flush(wr)?;
        }
        let Some(frame) = read_frame(rd)? else {
            tracing::info!("agent closed the link");
            return Ok(());
        };
        if let Some(id) = rx.already_refused(&frame) {
            if matches!(frame, Frame::Done { .. } | Frame::Abort { .. }) {
                rx.refused.remove(&id);
            }
            continue;
        }
        if !answer(frame, rx, wr, committer)? {
            return Ok(());
        }
    }
}

/// Answers one frame from the agent; false once it said goodbye.
fn answer<W: Write>(
    frame: Frame,
    rx: &mut Receiver,
    wr: &SharedWriter<W>,
    committer: &Committer,
) -> Result<bool, ServeError> {
    match frame {
        Frame::Offer {
            id,
            path,
            size,
            hash,
        } => {
            rx.refused.remove(&id);
            let reply = rx.offer(id, path, size, hash);
            rx.count_answer(&reply);
            send(wr, &reply, false)?;
        }
        Frame::Data { id, offset, bytes } => {
            let r = rx.data(id, offset, &bytes);
            refuse(rx, wr, id, r)?;
        }
        Frame::DataZ {
            id,
            offset,
            raw_len,
            bytes,
        } => {
            let r = rx.data_z(id, offset, raw_len, &bytes);
            refuse(rx, wr, id, r)?;
        }
        Frame::Delta { id, bytes } => {
            let r = rx.delta_bytes(id, &bytes);
            refuse(rx, wr, id, r)?;
        }
        Frame::DeltaCut { id } => {
            let r = rx.delta_cut(id);
            refuse(rx, wr, id, r)?;
        }
        Frame::Done { id } => {
            if let Some(f) = rx.done(id) {
                rx.count_answer(&f);
                send(wr, &f, false)?;
            }
        }
        Frame::Abort { id, reason } => rx.abort(id, &reason),
        Frame::Submit {
            stack,
            version,
            workflow,
            files,
            keep_older,
            partial,
        } => {
            settle(rx, committer);
            let reply = rx.submit(stack, version, workflow, files, (keep_older, partial));
            send(wr, &reply, true)?;
        }
        Frame::Discard { stack, files } => {
            settle(rx, committer);
            let reply = rx.discard(stack, files);
            send(wr, &reply, false)?;
        }
        Frame::Bye => {
            settle(rx, committer);
            flush(wr)?;
            return Ok(false);
        }
        other => {
            let message = format!("unexpected frame from the agent: {other:?}");
            let f = Frame::Error {
                code: ErrorCode::Protocol,
                message: message.clone(),
            };
            send(wr, &f, true)?;
            return Err(ProtocolError::Malformed(message).into());
        }
    }
    Ok(true)
}

/// Every verified file handed to the committer and made durable: what a submission,
/// a discard or a goodbye counts on.
fn settle(rx: &mut Receiver, committer: &Committer) {
    for f in rx.pending.drain(..) {
        committer.push(f);
    }
    committer.settle();
}

fn flush<W: Write>(wr: &SharedWriter<W>) -> Result<(), ServeError> {
    wr.lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush()
        .map_err(ProtocolError::Io)?;
    Ok(())
}
