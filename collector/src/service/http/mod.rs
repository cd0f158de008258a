//! The service's HTTP face: [`routes`] (the API for `serve`, the CLI and launchers), [`listen`]
//! (the front door and its bounds for peers that may not be friends), [`tls`] and [`address`]
//! (the pinned certificate, where it listens and what it advertises), [`page`] (the status
//! page) and [`metrics`] (`/metrics`).

pub mod address;
pub mod listen;
pub mod metrics;
pub mod page;
pub mod routes;
pub mod tls;
