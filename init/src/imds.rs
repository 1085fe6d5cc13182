//! Asking the instance metadata service at 169.254.169.254 for user-data:
//! EC2 (IMDSv2: a session token first), then GCE, then OpenStack, one
//! attempt each, within one short time budget. When nothing answers at the
//! address the lookup ends at once: a machine outside a cloud boots on.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::http::{self, HttpError, Limits, Request};
use crate::logger::chain;

/// The metadata services' address.
pub const ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));

/// Longest wait for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The whole lookup, every flavour included.
pub const BUDGET: Duration = Duration::from_secs(3);

/// Largest user-data accepted (EC2 allows 16 KiB, GCE 256 KiB).
pub const MAX_USER_DATA: usize = 1024 * 1024;

/// How long an EC2 session token asked for lives, in seconds.
const EC2_TOKEN_TTL: &str = "21600";

/// The metadata service dialects, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Amazon EC2, IMDSv2.
    Ec2,
    /// Google Compute Engine.
    Gce,
    /// OpenStack's metadata service.
    OpenStack,
}

impl Flavour {
    /// Every flavour, in lookup order.
    pub const ALL: [Flavour; 3] = [Flavour::Ec2, Flavour::Gce, Flavour::OpenStack];

    /// The user-data path.
    pub fn user_data_path(self) -> &'static str {
        match self {
            Flavour::Ec2 => "/latest/user-data",
            Flavour::Gce => "/computeMetadata/v1/instance/attributes/user-data",
            Flavour::OpenStack => "/openstack/latest/user_data",
        }
    }

    /// The user-data URL at `addr`, for messages.
    pub fn url(self, addr: SocketAddr) -> String {
        let host = host(addr);
        format!("http://{host}{}", self.user_data_path())
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Ec2 => "ec2",
            Flavour::Gce => "gce",
            Flavour::OpenStack => "openstack",
        })
    }
}

/// What the lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A flavour answered with user-data.
    Found {
        /// Which one.
        flavour: Flavour,
        /// The user-data, as served.
        body: Vec<u8>,
    },
    /// Something answered, but no flavour had user-data; each miss is noted.
    NoUserData(Vec<String>),
    /// Nothing answers at the address.
    Unreachable(HttpError),
}

/// `169.254.169.254` (or `host:port` when the port is not 80).
fn host(addr: SocketAddr) -> String {
    if addr.port() == 80 {
        addr.ip().to_string()
    } else {
        addr.to_string()
    }
}

/// Asks the service at `addr` for user-data, trying each [`Flavour`] once,
/// all within `budget`.
pub fn fetch_user_data(addr: SocketAddr, budget: Duration) -> Lookup {
    let deadline = Instant::now() + budget;
    let limits = Limits {
        connect: CONNECT_TIMEOUT,
        deadline,
        max_body: MAX_USER_DATA,
    };
    let host = host(addr);
    let mut misses = Vec::new();
    for flavour in Flavour::ALL {
        match fetch_one(addr, &host, flavour, limits) {
            Ok(Some(body)) => return Lookup::Found { flavour, body },
            Ok(None) => misses.push(format!("{flavour}: no user-data")),
            // The same address serves every flavour: if nothing listens
            // there (or the time is up), asking again cannot help.
            Err(e) if e.is_connect() && misses.is_empty() => return Lookup::Unreachable(e),
            Err(e @ HttpError::Timeout { .. }) => {
                misses.push(format!("{flavour}: {e}"));
                break;
            }
            Err(e) => misses.push(format!("{flavour}: {}", chain(&e))),
        }
    }
    Lookup::NoUserData(misses)
}

/// One flavour's user-data: `Ok(None)` when it answers without any (404,
/// or any other refusal, such as another flavour's service would give).
fn fetch_one(
    addr: SocketAddr,
    host: &str,
    flavour: Flavour,
    limits: Limits,
) -> Result<Option<Vec<u8>>, HttpError> {
    let path = flavour.user_data_path();
    let response = match flavour {
        Flavour::Ec2 => {
            let token = http::exchange(
                addr,
                host,
                &Request {
                    method: "PUT",
                    path: "/latest/api/token",
                    headers: &[("X-aws-ec2-metadata-token-ttl-seconds", EC2_TOKEN_TTL)],
                },
                limits,
            )?;
            if token.status != 200 {
                log::debug!("no EC2 session token: status {}", token.status);
                return Ok(None);
            }
            let token = String::from_utf8_lossy(&token.body).trim().to_string();
            http::exchange(
                addr,
                host,
                &Request {
                    method: "GET",
                    path,
                    headers: &[("X-aws-ec2-metadata-token", &token)],
                },
                limits,
            )?
        }
        Flavour::Gce => http::exchange(
            addr,
            host,
            &Request {
                method: "GET",
                path,
                headers: &[("Metadata-Flavor", "Google")],
            },
            limits,
        )?,
        Flavour::OpenStack => http::exchange(
            addr,
            host,
            &Request {
                method: "GET",
                path,
                headers: &[],
            },
            limits,
        )?,
    };
    if response.status == 200 {
        return Ok(Some(response.body));
    }
    log::debug!("{flavour} user-data: status {}", response.status);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    /// A metadata service on 127.0.0.1 that answers with `route` and
    /// records each request's first line (and its token header, if any).
    struct Service {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<String>>>,
    }

    fn reply(conn: &mut TcpStream, status: u16, body: &str) {
        let _ = write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }

    fn service(route: fn(&str) -> (u16, &'static str)) -> std::io::Result<Service> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let (status, body) = route(&head);
                let first = head.lines().next().unwrap_or("").to_string();
                log.lock().map(|mut l| l.push(first)).ok();
                reply(&mut conn, status, body);
            }
        });
        Ok(Service { addr, seen })
    }

    fn seen(s: &Service) -> Vec<String> {
        s.seen.lock().map(|l| l.clone()).unwrap_or_default()
    }

    #[test]
    fn ec2_token_then_user_data() -> Result<(), Box<dyn std::error::Error>> {
        let s = service(|head| {
            if head.starts_with("PUT /latest/api/token ")
                && head.contains("X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n")
            {
                (200, "tok-123")
            } else if head.starts_with("GET /latest/user-data ") {
                if head.contains("X-aws-ec2-metadata-token: tok-123\r\n") {
                    (200, "[system]\nhostname = \"ec2\"\n")
                } else {
                    (401, "")
                }
            } else {
                (404, "")
            }
        })?;
        let Lookup::Found { flavour, body } = fetch_user_data(s.addr, BUDGET) else {
            panic!("no user-data; requests: {:?}", seen(&s));
        };
        assert_eq!(flavour, Flavour::Ec2);
        assert_eq!(body, b"[system]\nhostname = \"ec2\"\n");
        assert_eq!(
            seen(&s),
            [
                "PUT /latest/api/token HTTP/1.1",
                "GET /latest/user-data HTTP/1.1"
            ]
        );
        Ok(())
    }

    #[test]
    fn falls_through_to_gce_and_openstack() -> Result<(), Box<dyn std::error::Error>> {
        let gce = service(|head| {
            if head.starts_with("GET /computeMetadata/") && head.contains("Metadata-Flavor: Google")
            {
                (200, "gce")
            } else {
                (404, "")
            }
        })?;
        assert!(matches!(
            fetch_user_data(gce.addr, BUDGET),
            Lookup::Found {
                flavour: Flavour::Gce,
                ..
            }
        ));

        let openstack = service(|head| {
            if head.starts_with("GET /openstack/latest/user_data ") {
                (200, "os")
            } else {
                (405, "")
            }
        })?;
        assert!(matches!(
            fetch_user_data(openstack.addr, BUDGET),
            Lookup::Found {
                flavour: Flavour::OpenStack,
                ..
            }
        ));
        assert_eq!(seen(&openstack).len(), 3, "{:?}", seen(&openstack));

        let empty = service(|_| (404, ""))?;
        let Lookup::NoUserData(misses) = fetch_user_data(empty.addr, BUDGET) else {
            panic!("expected no user-data");
        };
        assert_eq!(misses.len(), 3, "{misses:?}");
        Ok(())
    }

    #[test]
    fn nothing_listening_ends_the_lookup_at_once() -> Result<(), Box<dyn std::error::Error>> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let start = Instant::now();
        assert!(matches!(
            fetch_user_data(addr, BUDGET),
            Lookup::Unreachable(HttpError::Connect { .. })
        ));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        Ok(())
    }

    #[test]
    fn a_silent_service_costs_the_budget_once() -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let start = Instant::now();
        let lookup = fetch_user_data(listener.local_addr()?, Duration::from_millis(400));
        let took = start.elapsed();
        let Lookup::NoUserData(misses) = lookup else {
            panic!("expected a timeout, got {lookup:?}");
        };
        assert_eq!(misses.len(), 1, "{misses:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        Ok(())
    }

    #[test]
    fn urls_name_the_real_address() {
        assert_eq!(
            Flavour::Ec2.url(ADDRESS),
            "http://169.254.169.254/latest/user-data"
        );
        assert_eq!(Flavour::OpenStack.to_string(), "openstack");
    }
}
