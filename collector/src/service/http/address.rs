//! Where the service listens and the address it tells everyone else. On a site the service
//! runs on one login node of several behind a load-balanced name, and launchers run on
//! compute nodes: each must be told an address that reaches this node from where it is,
//! never a loopback address that would reach its own host.

use std::net::{IpAddr, SocketAddr};

/// Why `[service] listen` gives no address to bind.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Not written as `host:port`.
    #[error(transparent)]
    Written(#[from] beamflow_config::AddressError),
    /// The name does not resolve.
    #[error("cannot resolve {host}: {source}; check the name or write an address")]
    Resolve {
        /// The host as written.
        host: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The name resolves to nothing.
    #[error("{0} resolves to no address; write an address instead")]
    Nothing(String),
}

/// Resolves `[service] listen` (`host:port`) to the addresses to try binding, in order.
pub async fn listen_addrs(listen: &str) -> Result<Vec<SocketAddr>, ListenError> {
    let (host, port) = beamflow_config::split_host_port(listen)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|source| ListenError::Resolve {
            host: host.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ListenError::Nothing(host));
    }
    Ok(addrs)
}

/// The host part of the URL clients are given: `advertise` when set; else the address
/// listened on when it is a specific one (loopback included: then only this host is meant);
/// else, for every interface, this host's fully qualified name.
pub fn advertised(advertise: &str, listen: &str, bound: SocketAddr) -> String {
    if !advertise.is_empty() {
        return advertise.to_string();
    }
    if bound.ip().is_unspecified() {
        return fqdn();
    }
    match beamflow_config::split_host_port(listen) {
        // a name as written (it resolved to what was bound), an address as bound
        Ok((host, _)) if host.parse::<IpAddr>().is_err() => host,
        _ => bound.ip().to_string(),
    }
}

/// `https://HOST:PORT`, with IPv6 addresses in brackets.
pub fn url(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// The names the certificate must cover: the advertised one, and the names and addresses
/// people on this host use (so that a loopback URL works too), without repeats.
pub fn cert_names(advertised: &str, bound: SocketAddr) -> Vec<String> {
    let mut names = vec![advertised.to_string()];
    for n in [
        fqdn(),
        crate::api::this_host(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ] {
        names.push(n);
    }
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

/// This host's fully qualified name, as `hostname -f` gives it (the canonical name of the
/// host name); the plain host name when the resolver knows no more.
pub fn fqdn() -> String {
    let host = crate::api::this_host();
    let Ok(c_host) = std::ffi::CString::new(host.clone()) else {
        return host;
    };
    // SAFETY: getaddrinfo is given a valid C string and zeroed hints; the list it returns is
    // read before freeaddrinfo releases it
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_flags = libc::AI_CANONNAME;
        hints.ai_family = libc::AF_UNSPEC;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        if libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut res) != 0
            || res.is_null()
        {
            return host;
        }
        let canon = (*res).ai_canonname;
        let name = if canon.is_null() {
            host
        } else {
            std::ffi::CStr::from_ptr(canon)
                .to_string_lossy()
                .into_owned()
        };
        libc::freeaddrinfo(res);
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_host_is_never_a_wildcard() {
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let v6: SocketAddr = "[::]:7000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let nic: SocketAddr = "10.1.2.3:7000".parse().unwrap();
        assert_eq!(advertised("", "0.0.0.0:7000", any), fqdn());
        assert_eq!(advertised("", "[::]:7000", v6), fqdn());
        assert_eq!(advertised("", "127.0.0.1:0", lo), "127.0.0.1");
        assert_eq!(advertised("", "10.1.2.3:0", nic), "10.1.2.3");
        assert_eq!(advertised("", "login1.site.org:0", nic), "login1.site.org");
        assert_eq!(advertised("polaris.alcf", "0.0.0.0:0", any), "polaris.alcf");
        assert_eq!(url("::1", 5), "https://[::1]:5");
        assert_eq!(url("10.1.2.3", 5), "https://10.1.2.3:5");
        let names = cert_names("10.1.2.3", nic);
        assert_eq!(names[0], "10.1.2.3");
        assert_eq!(
            names.iter().filter(|n| *n == "10.1.2.3").count(),
            1,
            "{names:?}"
        );
    }
}
