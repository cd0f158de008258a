//! The API's front door, for peers that may not be friends. Whoever reaches the port can
//! open connections without a token, so everything such a peer can hold is bounded here:
//! the TLS handshake and the first request's headers must come within `header_timeout`
//! (hyper's own header timer, which `axum::serve` leaves off, runs too), a connection with
//! no request in flight is closed after `idle_timeout`, and connections are capped in all
//! and per peer address. At a cap the oldest idle connection is shed to make room (a
//! launcher whose kept connection is shed simply opens a new one); only when none is idle
//! is the newcomer turned away. Running out of descriptors sheds too, and backs off with
//! one log line per interval instead of spinning. At shutdown in-flight requests get
//! `shutdown_grace`, then every connection is dropped.
//!
//! The bookkeeping is a [`Registry`] of plain data with pure decisions (`admit`, `expired`)
//! that take `now`; the tasks only apply them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

/// What one peer, and all peers together, may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TLS handshake plus the first request's headers; also hyper's per-request header timer.
    pub header: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle: Duration,
    /// Connections in all.
    pub max_total: usize,
    /// Connections from one address.
    pub max_per_peer: usize,
    /// How long requests in flight may still run once shutdown begins.
    pub grace: Duration,
}

impl Limits {
    /// The limits `[service]` sets, the total lowered to what the descriptor limit allows
    /// (the database, logs and launchers' pipes need descriptors too).
    pub fn from_config(s: &beamflow_config::ServiceSection) -> Limits {
        let fds = descriptor_limit().saturating_sub(RESERVED_FDS).max(8);
        let max_total = (s.max_connections as usize).min(fds);
        if max_total < s.max_connections as usize {
            tracing::info!(
                max_connections = max_total,
                "fewer connections than [service] max_connections: the descriptor limit (ulimit -n) allows only these"
            );
        }
        Limits {
            header: s.header_timeout.0,
            idle: s.idle_timeout.0,
            max_total,
            max_per_peer: (s.max_per_peer as usize).min(max_total),
            grace: s.shutdown_grace.0,
        }
    }
}

/// Descriptors kept for everything but connections.
const RESERVED_FDS: usize = 64;

fn descriptor_limit() -> usize {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    usize::try_from(l.rlim_cur).unwrap_or(usize::MAX)
}

/// One open connection, as the limits see it.
#[derive(Debug)]
struct Conn {
    peer: IpAddr,
    /// Requests in flight.
    busy: u32,
    /// Since when nothing has been in flight (or since it was accepted).
    idle_since: Instant,
    /// Whether it ever carried a request: before that, `header` bounds it, after, `idle`.
    served: bool,
    kill: Arc<Notify>,
}

/// Every open connection. Plain data: decisions take `now` and return what to shed.
#[derive(Debug, Default)]
pub struct Registry {
    next: u64,
    conns: HashMap<u64, Conn>,
}

/// What [`Registry::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Welcome, under this id; the listed connections make room and must be closed.
    Yes(u64, Vec<u64>),
    /// Every connection counted against the limit is busy: turn the newcomer away.
    No,
}

impl Registry {
    fn oldest_idle(&self, peer: Option<IpAddr>, skip: &[u64]) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(id, c)| c.busy == 0 && peer.is_none_or(|p| c.peer == p) && !skip.contains(id))
            .min_by_key(|(id, c)| (c.idle_since, **id))
            .map(|(id, _)| *id)
    }

    /// Decides about a new connection from `peer` at `now`, and registers it if admitted.
    pub fn admit(&mut self, peer: IpAddr, now: Instant, limits: &Limits) -> (Admit, Arc<Notify>) {
        let kill = Arc::new(Notify::new());
        let mut shed = Vec::new();
        let from_peer = self.conns.values().filter(|c| c.peer == peer).count();
        if from_peer >= limits.max_per_peer {
            match self.oldest_idle(Some(peer), &shed) {
                Some(id) => shed.push(id),
                None => return (Admit::No, kill),
            }
        }
        if self.conns.len() - shed.len() >= limits.max_total {
            match self.oldest_idle(None, &shed) {
                Some(id) => shed.push(id),
                None => return (Admit::No, kill),
            }
        }
        for id in &shed {
            self.close(*id);
        }
        self.next += 1;
        let id = self.next;
        self.conns.insert(
            id,
            Conn {
                peer,
                busy: 0,
                idle_since: now,
                served: false,
                kill: kill.clone(),
            },
        );
        (Admit::Yes(id, shed), kill)
    }

    /// Connections that have been idle too long at `now`.
    pub fn expired(&self, now: Instant, limits: &Limits) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| {
                let limit = if c.served { limits.idle } else { limits.header };
                c.busy == 0 && now.saturating_duration_since(c.idle_since) >= limit
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The oldest idle connection, closed to free a descriptor.
    fn shed_one(&mut self) -> bool {
        match self.oldest_idle(None, &[]) {
            Some(id) => {
                self.close(id);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            c.kill.notify_one();
        }
    }

    fn started(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.busy += 1;
            c.served = true;
        }
    }

    fn ended(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.busy = c.busy.saturating_sub(1);
            if c.busy == 0 {
                c.idle_since = now;
            }
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

type Shared = Arc<Mutex<Registry>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    // the registry holds plain data that every step leaves consistent
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks a request in flight on its connection until dropped (a handler that panics or a
/// client that goes away still ends it).
struct InFlight(Shared, u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).ended(self.1, Instant::now());
    }
}

/// Serves `app` over TLS on `tcp` until `shutdown` completes, within `limits`.
pub async fn serve(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let reg: Shared = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let sweeper = tokio::spawn(sweep(reg.clone(), limits));
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    let mut last_warned: Option<Instant> = None;
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = tcp.accept() => a,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                // out of descriptors (or the like): free the oldest idle one, wait, and say so
                // once an interval rather than at every attempt
                let shed = lock(&reg).shed_one();
                if last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        open = lock(&reg).len(),
                        shed_one = shed,
                        "cannot accept connections: {e}; backing off (raise the descriptor limit, LimitNOFILE=, or lower [service] max_connections)"
                    );
                    last_warned = Some(Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (admit, kill) = lock(&reg).admit(peer.ip(), Instant::now(), &limits);
        let Admit::Yes(id, _) = admit else {
            refused += 1;
            if last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(%peer, refused, "connection turned away: every connection is busy at the limit ([service] max_connections, max_per_peer)");
                last_warned = Some(Instant::now());
            }
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            peer,
            id,
            acceptor: acceptor.clone(),
            app: app.clone(),
            reg: reg.clone(),
            stop: stop_rx.clone(),
            limits,
        };
        tasks.spawn(async move {
            let reg = conn.reg.clone();
            tokio::select! {
                _ = conn.serve(stream) => {}
                _ = kill.notified() => tracing::debug!(%peer, "connection closed: idle too long or shed at a limit"),
            }
            lock(&reg).close(id);
        });
    }
    sweeper.abort();
    drop(tcp);
    let _ = stop_tx.send(true);
    finish(tasks, limits.grace).await;
}

/// Closes connections idle too long, twice a second.
async fn sweep(reg: Shared, limits: Limits) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let mut r = lock(&reg);
        for id in r.expired(Instant::now(), &limits) {
            r.close(id);
        }
    }
}

/// Shutdown: requests in flight may finish within `grace`; what is left then is closed.
async fn finish(mut tasks: tokio::task::JoinSet<()>, grace: Duration) {
    let open = tasks.len();
    if open == 0 {
        return;
    }
    tracing::info!(open, "waiting up to {grace:?} for requests in flight");
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "requests still in flight after the shutdown grace; closing them"
        );
        tasks.abort_all();
    }
}

/// One admitted connection: its TLS handshake and its requests, each marked in flight in
/// the registry while it runs.
struct Connection {
    peer: std::net::SocketAddr,
    id: u64,
    acceptor: TlsAcceptor,
    app: axum::Router,
    reg: Shared,
    stop: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
}

impl Connection {
    async fn serve(mut self, stream: tokio::net::TcpStream) {
        let peer = self.peer;
        let handshake = self.acceptor.accept(stream);
        let tls = match tokio::time::timeout(self.limits.header, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let svc = {
            let (reg, app, id) = (self.reg.clone(), self.app.clone(), self.id);
            hyper::service::service_fn(move |req| {
                lock(&reg).started(id);
                let guard = InFlight(reg.clone(), id);
                let mut app = app.clone();
                async move {
                    let r = tower_service::Service::call(&mut app, req).await;
                    drop(guard);
                    r
                }
            })
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.limits.header)
            .max_buf_size(64 * 1024);
        let c = http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
        tokio::pin!(c);
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = self.stop.wait_for(|s| *s) => {}
        }
        // shutdown: the request in flight finishes, nothing new starts; the grace bound is
        // the serve loop's
        c.as_mut().graceful_shutdown();
        let _ = c.await;
    }
}

/// At most one warning per interval about turned-away connections or a full descriptor table.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> Limits {
        Limits {
            header: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            max_total: total,
            max_per_peer: per_peer,
            grace: Duration::from_secs(5),
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn yes(a: &Admit) -> u64 {
        match a {
            Admit::Yes(id, _) => *id,
            Admit::No => panic!("turned away"),
        }
    }

    #[test]
    fn at_a_peer_s_limit_its_oldest_idle_connection_makes_room() {
        let l = limits(100, 2);
        let mut r = Registry::default();
        let t0 = Instant::now();
        let a = yes(&r.admit(ip(1), t0, &l).0);
        let b = yes(&r.admit(ip(1), t0 + Duration::from_secs(1), &l).0);
        // another peer is not counted against this one
        yes(&r.admit(ip(2), t0, &l).0);
        let (c, _) = r.admit(ip(1), t0 + Duration::from_secs(2), &l);
        assert_eq!(c, Admit::Yes(4, vec![a]));
        // busy connections are never shed: with both busy the newcomer is turned away
        r.started(b);
        r.started(4);
        assert_eq!(r.admit(ip(1), t0 + Duration::from_secs(3), &l).0, Admit::No);
        // once one is idle again it is the one to go
        r.ended(b, t0 + Duration::from_secs(4));
        assert_eq!(
            r.admit(ip(1), t0 + Duration::from_secs(5), &l).0,
            Admit::Yes(5, vec![b])
        );
    }

    #[test]
    fn at_the_total_limit_the_oldest_idle_of_anyone_makes_room() {
        let l = limits(3, 3);
        let mut r = Registry::default();
        let t0 = Instant::now();
        let a = yes(&r.admit(ip(1), t0, &l).0);
        let b = yes(&r.admit(ip(2), t0 + Duration::from_secs(1), &l).0);
        let c = yes(&r.admit(ip(3), t0 + Duration::from_secs(2), &l).0);
        r.started(a);
        assert_eq!(
            r.admit(ip(4), t0 + Duration::from_secs(3), &l).0,
            Admit::Yes(4, vec![b])
        );
        assert_eq!(r.len(), 3);
        r.started(c);
        r.started(4);
        assert_eq!(r.admit(ip(5), t0 + Duration::from_secs(4), &l).0, Admit::No);
    }

    #[test]
    fn silent_connections_expire_after_the_header_limit_idle_ones_after_the_idle_limit() {
        let l = limits(10, 10);
        let mut r = Registry::default();
        let t0 = Instant::now();
        let silent = yes(&r.admit(ip(1), t0, &l).0);
        let kept = yes(&r.admit(ip(1), t0, &l).0);
        r.started(kept);
        r.ended(kept, t0 + Duration::from_secs(1));
        assert!(r.expired(t0 + Duration::from_secs(4), &l).is_empty());
        assert_eq!(r.expired(t0 + Duration::from_secs(5), &l), vec![silent]);
        let mut late = r.expired(t0 + Duration::from_secs(61), &l);
        late.sort();
        assert_eq!(late, vec![silent, kept]);
        // a long request in flight never expires
        r.started(kept);
        assert_eq!(r.expired(t0 + Duration::from_secs(600), &l), vec![silent]);
    }
}
