//! `beamflow-collector service`: the long-running daemon that owns the database, serves the
//! HTTP API that `serve`, the CLI and launchers use, and runs the engine that moves jobs.
//!
//! Its rooms: [`http`] (the routes, the front door, TLS and address, the page, metrics),
//! [`store`] (the database by table and its writes), [`lifecycle`] (the job's and the
//! launcher's states and legal moves, as data), [`engine`] (reacting to [`wake`]'s bells, with
//! [`clock`]'s `now`), [`outcome`] (a DAG in one word, for the beamline) and [`retention`]
//! (`[collector] keep`). What a stack's jobs are and how they are checked is
//! [`crate::science`].

pub mod clock;
pub mod engine;
pub mod http;
pub mod lifecycle;
pub mod outcome;
pub mod retention;
pub mod store;
pub mod wake;

use crate::api::{ServerInfo, SERVER_INFO};
use beamflow_config::Config;
use engine::Engine;
use http::{address, listen, routes as api, tls};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::{Db, DbError};
use wake::Wake;

/// Why the service could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A folder or file of the state dir could not be made.
    #[error("failed to prepare {path}: {cause}")]
    State {
        /// Which.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Another service holds the lock.
    #[error("another collector service already owns {path}; stop it first (see its pid in server-info), or give this one its own state_dir")]
    AlreadyRunning {
        /// The lock file.
        path: PathBuf,
    },
    /// The database could not be opened.
    #[error("failed to open the database {path}: {cause}")]
    Db {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: DbError,
    },
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}: {cause}; pick another `service.listen` address (an interface of this host, or 0.0.0.0:0)")]
    Bind {
        /// Address, as written and as tried.
        addr: String,
        /// Why.
        cause: String,
    },
    /// The TLS certificate could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The HTTP server failed.
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
}

fn random_token() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(hex::encode(buf))
}

/// Writes a file only its owner may read, atomically (a temporary name, fsync, rename): for
/// `server-info`, whose token is the API's only key, and the certificate's private key.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes `server-info`.
fn write_server_info(dir: &Path, info: &ServerInfo) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(info).unwrap_or_default();
    write_private(&dir.join(SERVER_INFO), text.as_bytes())
}

/// Binds the first address `[service] listen` resolves to that can be bound.
async fn bind(listen: &str) -> Result<tokio::net::TcpListener, ServiceError> {
    let fail = |cause: String| ServiceError::Bind {
        addr: listen.to_string(),
        cause,
    };
    let mut last = String::new();
    let addrs = address::listen_addrs(listen).await;
    for a in addrs.map_err(|e| fail(e.to_string()))? {
        match tokio::net::TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(fail(last))
}

/// Makes the state folder and takes its lock: one service per state folder. Held while the
/// returned file is open.
fn claim(state_dir: &Path) -> Result<std::fs::File, ServiceError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServiceError::State {
            path,
            cause: source,
        }
    };
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let lock_path = state_dir.join("service.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(ServiceError::AlreadyRunning { path: lock_path });
    }
    Ok(lock)
}

/// Runs the service until `shutdown` completes. The database, the lock and `server-info`
/// live in `[collector] state_dir`.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let state_dir = cfg.collector.state_dir.clone();
    let lock = claim(&state_dir)?;
    let db_path = state_dir.join("collector.db");
    let db =
        Db::open(&db_path, &cfg.collector.legacy_beamline).map_err(|source| ServiceError::Db {
            path: db_path.clone(),
            cause: source,
        })?;
    let urandom = |source| ServiceError::State {
        path: "/dev/urandom".into(),
        cause: source,
    };
    let token = random_token().map_err(urandom)?;
    let read_token = random_token().map_err(urandom)?;
    let listener = bind(&cfg.service.listen).await?;
    let addr = listener.local_addr().map_err(ServiceError::Serve)?;
    let host = address::advertised(&cfg.service.advertise, &cfg.service.listen, addr);
    let identity = tls::load_or_make(&state_dir, &address::cert_names(&host, addr))?;
    let acceptor = tls::acceptor(&identity)?;
    let info = ServerInfo {
        url: address::url(&host, addr.port()),
        token: token.clone(),
        read_token: read_token.clone(),
        pid: std::process::id(),
        host: crate::api::this_host(),
        cert: identity.cert_pem.clone(),
        fingerprint: identity.fingerprint.clone(),
    };
    write_server_info(&state_dir, &info).map_err(|source| ServiceError::State {
        path: state_dir.join(SERVER_INFO),
        cause: source,
    })?;
    tracing::info!(url = %info.url, listen = %addr, fingerprint = %info.fingerprint, db = %db_path.display(), "collector service listening");
    let limits = listen::Limits::from_config(&cfg.service);

    let db = Arc::new(Mutex::new(db));
    if let Ok(mut d) = db.lock() {
        // launchers that kept running while the service was down get a full heartbeat period
        let _ = d.refresh_heartbeats();
    }
    let cfg = Arc::new(cfg);
    let wake = Arc::new(Wake::default());
    let engine = Arc::new(Engine::new(cfg.clone(), db.clone(), wake.clone()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine.run(&stop))
            .map_err(ServiceError::Serve)?
    };
    let app = api::router(api::AppState {
        db,
        token: Arc::new(token),
        read_token: Arc::new(read_token),
        cfg,
        engine,
        wake: wake.clone(),
        probes: Default::default(),
        contacts: Default::default(),
    });
    listen::serve(listener, acceptor, app, limits, shutdown).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    wake.engine();
    let _ = worker.join();
    let _ = std::fs::remove_file(state_dir.join(SERVER_INFO));
    drop(lock);
    tracing::info!("collector service stopped");
    Ok(())
}

#[cfg(test)]
mod tests;
