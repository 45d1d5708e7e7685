//! Where the CLI finds a running agent's API: `--api` takes `host:port`, a bare host name or
//! address (port 9210), or an `http://` URL.

use std::{
    fmt,
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    str::FromStr,
};

/// The API's default port.
pub const DEFAULT_PORT: u16 = 9210;

/// An API address as given: a host (name or address) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why `--api` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not something the CLI can read.
    #[error(
        "--api {0:?}: expected host:port, a host name or address, or http://host:port \
         ({1})"
    )]
    Invalid(String, &'static str),
    /// The name did not resolve.
    #[error("--api {0}: cannot resolve the host name: {1}")]
    Resolve(String, String),
}

impl FromStr for ApiEndpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let bad = |why| EndpointError::Invalid(s.to_owned(), why);
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("empty"));
        }
        let rest = if let Some((scheme, rest)) = t.split_once("://") {
            match scheme.to_ascii_lowercase().as_str() {
                "http" => rest,
                "https" => return Err(bad("the agent's API is plain HTTP; use http://")),
                _ => return Err(bad("only http:// URLs")),
            }
        } else {
            t
        };
        // A URL may carry a path (the API's own paths are added by the CLI).
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("no user name in the URL; use --token-file"));
        }
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return Ok(Self {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if let Ok(ip) = authority.parse::<IpAddr>() {
            return Ok(Self {
                host: ip.to_string(),
                port: DEFAULT_PORT,
            });
        }
        if let Some(inner) = authority
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
        {
            let ip: IpAddr = inner.parse().map_err(|_| bad("not an IPv6 address"))?;
            return Ok(Self {
                host: ip.to_string(),
                port: DEFAULT_PORT,
            });
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port must be 1 to 65535"))?,
            ),
            None => (authority, DEFAULT_PORT),
        };
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_name {
            return Err(bad("not a host name"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ApiEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for ApiEndpoint {
    fn from(a: SocketAddr) -> Self {
        Self {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl ApiEndpoint {
    /// The address to connect to. A name with several addresses (`localhost`: `::1` and
    /// `127.0.0.1`) resolves to the first that accepts a connection, else to its first.
    pub fn resolve(&self) -> Result<SocketAddr, EndpointError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| EndpointError::Resolve(self.to_string(), e.to_string()))?
            .collect();
        if addrs.len() > 1 {
            for a in &addrs {
                if std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(1))
                    .is_ok()
                {
                    return Ok(*a);
                }
            }
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| EndpointError::Resolve(self.to_string(), "no address".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Result<String, EndpointError> {
        s.parse::<ApiEndpoint>().map(|e| e.to_string())
    }

    #[test]
    fn host_port_names_and_urls_are_accepted() {
        assert_eq!(ep("127.0.0.1:9210").unwrap(), "127.0.0.1:9210");
        assert_eq!(ep("10.1.2.3").unwrap(), "10.1.2.3:9210");
        assert_eq!(ep("[::1]:19210").unwrap(), "[::1]:19210");
        assert_eq!(ep("::1").unwrap(), "[::1]:9210");
        assert_eq!(ep("[2001:db8::1]").unwrap(), "[2001:db8::1]:9210");
        assert_eq!(ep("localhost").unwrap(), "localhost:9210");
        assert_eq!(
            ep("fnm-1.example.net:8080").unwrap(),
            "fnm-1.example.net:8080"
        );
        assert_eq!(ep("http://127.0.0.1:9210").unwrap(), "127.0.0.1:9210");
        assert_eq!(ep("http://127.0.0.1:9210/").unwrap(), "127.0.0.1:9210");
        assert_eq!(ep("HTTP://localhost/api/v1").unwrap(), "localhost:9210");
        assert_eq!(ep("http://[::1]:9/").unwrap(), "[::1]:9");
    }

    #[test]
    fn what_cannot_work_is_refused_with_a_reason() {
        for bad in [
            "",
            "https://x:1",
            "ftp://x",
            "host:0",
            "host:99999",
            "host:",
            ":9210",
            "a b",
            "http://user@host",
            "[::1",
            "a..b",
        ] {
            assert!(ep(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ep("https://x")
            .unwrap_err()
            .to_string()
            .contains("plain HTTP"));
    }

    #[test]
    fn names_and_addresses_resolve() {
        let e: ApiEndpoint = "127.0.0.1:5".parse().unwrap();
        assert_eq!(e.resolve().unwrap(), "127.0.0.1:5".parse().unwrap());
        let e: ApiEndpoint = "localhost:7".parse().unwrap();
        assert!(e.resolve().unwrap().ip().is_loopback());
    }
}
