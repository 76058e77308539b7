//! The server-side request forgery guard for callback URLs that tenants give us.
//!
//! A callback URL must not let a tenant reach what only the server can reach: loopback,
//! private networks, link-local (with the cloud metadata service at 169.254.169.254) and the
//! like. Checking the URL's host once is not enough, because a name can resolve to a public
//! address when checked and to a private one when connected (DNS rebinding). So the HTTP client
//! from [`http_client`] resolves names through [`GuardedResolver`], which checks every address
//! it hands to the connector: the address checked is the address connected.
//!
//! The forbidden ranges are a table of CIDR blocks rather than `std`'s `is_global`, which is
//! still unstable, and an operator can open any of them with the `allow_private` list (for a
//! receiver on the same host or network, and for tests).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Host names of cloud metadata services, refused whatever they resolve to and whatever the
/// allowlist says: they resolve to link-local addresses on the clouds that define them, but an
/// allowlisted private range must not open them by accident.
const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata", "instance-data"];

/// A connection that is not established within this long is a receiver that is down; failing
/// early hands over to the retry schedule sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a kind of address is not a valid callback destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 0.0.0.0/8 and `::`, which Linux connects to the local host.
    Unspecified,
    Loopback,
    /// 10/8, 172.16/12, 192.168/16 and the deprecated IPv6 site-local fec0::/10.
    Private,
    /// 169.254/16 (with the metadata service) and fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT, used inside some clouds for their own services.
    SharedAddressSpace,
    /// 198.18/15.
    Benchmarking,
    /// IPv6 unique local addresses, fc00::/7.
    UniqueLocal,
    Multicast,
    Broadcast,
    /// Documentation ranges, never routed.
    Documentation,
    /// IETF-reserved blocks (192.0.0/24, 240/4, 100::/64, the local-use NAT64 prefix).
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedAddressSpace => "shared (carrier-grade NAT)",
            Self::Benchmarking => "benchmarking",
            Self::UniqueLocal => "unique local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Reserved => "reserved",
        })
    }
}

/// A configuration mistake in the allowlist, reported at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    #[error("allow_private entry {entry:?} is neither an IP address nor a CIDR block")]
    InvalidEntry { entry: String },
}

/// Why a callback URL or one of its addresses was refused.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    #[error("callback url is not a valid URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    #[error("callback url scheme {0:?} is not allowed; use http or https")]
    UnsupportedScheme(String),
    #[error("callback url has no host")]
    MissingHost,
    #[error("callback url must not carry a user name or password")]
    Credentials,
    #[error("callback host {0:?} is a cloud metadata service")]
    MetadataHost(String),
    #[error(
        "callback host {host:?} is {addr}, a {class} address, which allow_private does not list"
    )]
    ForbiddenAddress {
        host: String,
        addr: IpAddr,
        class: AddressClass,
    },
    #[error("could not resolve callback host {host:?}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("callback host {0:?} resolved to no addresses")]
    NoAddresses(String),
    /// A host name that does not resolve, or resolves to a forbidden address. One message
    /// for both, naming neither the address nor its class: the difference would tell a
    /// tenant which names exist in the internal DNS and where they point.
    #[error(
        "callback host {0:?} does not resolve to an address genrt may call (a public one, or one \
         webhooks.allow_private lists)"
    )]
    UnusableName(String),
}

/// Decides which callback URLs and addresses may be connected to. Cheap to share behind an
/// `Arc`; it holds only the parsed allowlist.
#[derive(Debug, Clone, Default)]
pub struct UrlGuard {
    allow: Vec<IpNet>,
}

impl UrlGuard {
    /// `allow` entries are CIDR blocks (`10.0.0.0/8`) or single addresses (`127.0.0.1`, `::1`).
    pub fn new(allow: &[String]) -> Result<Self, AllowlistError> {
        let allow = allow
            .iter()
            .map(|entry| {
                let trimmed = entry.trim();
                trimmed
                    .parse::<IpNet>()
                    .or_else(|_| trimmed.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| AllowlistError::InvalidEntry {
                        entry: entry.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// Parses and checks a callback URL: http or https, a host, no credentials, not a metadata
    /// host name, and, when the host is an IP literal, an allowed address. A host name's
    /// addresses are checked when it is resolved, at connect time (see [`GuardedResolver`]).
    pub fn check_url(&self, url: &str) -> Result<Url, SsrfError> {
        let url = Url::parse(url)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SsrfError::UnsupportedScheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SsrfError::Credentials);
        }
        // The URL parser has already turned decimal, octal and hex IPv4 spellings
        // (`http://2130706433/`) into addresses, so they cannot pass as names.
        match url.host().ok_or(SsrfError::MissingHost)? {
            url::Host::Domain(name) => check_host_name(name)?,
            url::Host::Ipv4(addr) => {
                self.check_addr(url.host_str().unwrap_or_default(), addr.into())?
            }
            url::Host::Ipv6(addr) => {
                self.check_addr(url.host_str().unwrap_or_default(), addr.into())?
            }
        }
        Ok(url)
    }

    /// Resolves `host` and returns its addresses with `port`, refusing the host if any of
    /// them is forbidden: a name with one private address among public ones is how a rebinding
    /// attack is set up, and the connector may pick any of them.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(addr) = literal.parse::<IpAddr>() {
            self.check_addr(host, addr)?;
            return Ok(vec![SocketAddr::new(addr, port)]);
        }
        check_host_name(host)?;
        let checked = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| SsrfError::Resolve {
                    host: host.to_owned(),
                    source,
                })?
                .collect();
            if addrs.is_empty() {
                return Err(SsrfError::NoAddresses(host.to_owned()));
            }
            for addr in &addrs {
                self.check_addr(host, addr.ip())?;
            }
            Ok(addrs)
        };
        checked.await.map_err(|err| {
            // The detail is for the operator's log, never for the tenant's answer.
            tracing::debug!(host, error = %err, "callback host refused");
            SsrfError::UnusableName(host.to_owned())
        })
    }

    /// Refuses `addr` if it is in a forbidden class and the allowlist does not name it.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), SsrfError> {
        match classify(addr) {
            Some(class) if !self.allows(addr) => Err(SsrfError::ForbiddenAddress {
                host: host.to_owned(),
                addr,
                class,
            }),
            _ => Ok(()),
        }
    }

    /// An IPv6 form that embeds an IPv4 address is allowed when that IPv4 address is, so that
    /// allowing `127.0.0.1` also allows `::ffff:127.0.0.1`.
    fn allows(&self, addr: IpAddr) -> bool {
        let embedded = match addr {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|net| net.contains(&addr) || embedded.is_some_and(|v4| net.contains(&v4)))
    }
}

fn check_host_name(name: &str) -> Result<(), SsrfError> {
    let normalized = name.trim_end_matches('.').to_ascii_lowercase();
    if METADATA_HOSTS.contains(&normalized.as_str()) {
        return Err(SsrfError::MetadataHost(name.to_owned()));
    }
    Ok(())
}

/// The class that makes `addr` forbidden, or `None` for an address fit to call.
pub fn classify(addr: IpAddr) -> Option<AddressClass> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(addr: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    // Broadcast comes before 240/4, which contains it, so that it gets its own name.
    const TABLE: &[(Ipv4Addr, u8, AddressClass)] = &[
        (Ipv4Addr::new(255, 255, 255, 255), 32, Broadcast),
        (Ipv4Addr::new(0, 0, 0, 0), 8, Unspecified),
        (Ipv4Addr::new(10, 0, 0, 0), 8, Private),
        (Ipv4Addr::new(100, 64, 0, 0), 10, SharedAddressSpace),
        (Ipv4Addr::new(127, 0, 0, 0), 8, Loopback),
        (Ipv4Addr::new(169, 254, 0, 0), 16, LinkLocal),
        (Ipv4Addr::new(172, 16, 0, 0), 12, Private),
        (Ipv4Addr::new(192, 0, 0, 0), 24, Reserved),
        (Ipv4Addr::new(192, 0, 2, 0), 24, Documentation),
        (Ipv4Addr::new(192, 168, 0, 0), 16, Private),
        (Ipv4Addr::new(198, 18, 0, 0), 15, Benchmarking),
        (Ipv4Addr::new(198, 51, 100, 0), 24, Documentation),
        (Ipv4Addr::new(203, 0, 113, 0), 24, Documentation),
        (Ipv4Addr::new(224, 0, 0, 0), 4, Multicast),
        (Ipv4Addr::new(240, 0, 0, 0), 4, Reserved),
    ];
    TABLE.iter().find_map(|&(net, prefix, class)| {
        Ipv4Net::new(net, prefix)
            .ok()
            .filter(|net| net.contains(&addr))
            .map(|_| class)
    })
}

fn classify_v6(addr: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if addr.is_unspecified() {
        return Some(Unspecified);
    }
    if addr.is_loopback() {
        return Some(Loopback);
    }
    // A forbidden IPv4 address must not come back in through one of the IPv6 forms that
    // carry it (mapped, compatible, NAT64, 6to4); a public one so carried is judged as such.
    if let Some(v4) = embedded_ipv4(addr) {
        return classify_v4(v4);
    }
    const TABLE: &[(Ipv6Addr, u8, AddressClass)] = &[
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, Reserved),
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, Reserved),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            Documentation,
        ),
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, UniqueLocal),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LinkLocal),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, Private),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, Multicast),
    ];
    TABLE.iter().find_map(|&(net, prefix, class)| {
        Ipv6Net::new(net, prefix)
            .ok()
            .filter(|net| net.contains(&addr))
            .map(|_| class)
    })
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 well-known-prefix (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`) address. Teredo
/// is left out: its client address is obfuscated and its server is reached over IPv4 anyway.
fn embedded_ipv4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = addr.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // `::` and `::1` are handled as themselves before this is asked.
        [0, 0, 0, 0, 0, 0, _, _] if !addr.is_unspecified() && !addr.is_loopback() => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// A reqwest resolver that resolves through [`UrlGuard::resolve`], so that every address a
/// connection is made to has passed the guard, at the moment of connecting.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Arc<UrlGuard>,
}

impl GuardedResolver {
    pub fn new(guard: Arc<UrlGuard>) -> Self {
        Self { guard }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            // Port 0 is replaced by reqwest with the URL's port or the scheme's default.
            let addrs = guard
                .resolve(name.as_str(), 0)
                .await
                .map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for callbacks: host names resolve through a [`GuardedResolver`], redirects
/// are not followed (a redirect is a new, unchecked URL), proxies from the environment are
/// ignored (a proxy would resolve the host itself, past the guard), connecting is bounded by
/// five seconds or `timeout` if shorter, and the whole request by `timeout`.
///
/// reqwest does not call a resolver for a URL whose host is an IP literal, so this client alone
/// does not stop `http://127.0.0.1/`: every URL must pass [`UrlGuard::check_url`] with the same
/// guard before it is requested.
pub fn http_client(
    guard: Arc<UrlGuard>,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(guard)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout)
        .user_agent(concat!("genrt-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn guard(allow: &[&str]) -> UrlGuard {
        UrlGuard::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn forbidden_class(result: Result<Url, SsrfError>) -> AddressClass {
        match result {
            Err(SsrfError::ForbiddenAddress { class, .. }) => class,
            other => panic!("expected a forbidden address, got {other:?}"),
        }
    }

    #[test]
    fn internal_ip_literals_are_refused() {
        use AddressClass::*;
        let g = guard(&[]);
        for (url, class) in [
            ("http://127.0.0.1/", Loopback),
            ("http://127.8.9.10:8080/hook", Loopback),
            ("http://10.1.2.3/", Private),
            ("http://172.16.0.1/", Private),
            ("http://172.31.255.254/", Private),
            ("http://192.168.1.1/", Private),
            ("http://169.254.169.254/latest/meta-data/", LinkLocal),
            ("http://100.100.100.200/", SharedAddressSpace),
            ("http://198.18.0.1/", Benchmarking),
            ("http://0.0.0.0/", Unspecified),
            ("http://255.255.255.255/", Broadcast),
            ("http://224.0.0.1/", Multicast),
            ("http://2130706433/", Loopback),
            ("http://0x7f.1/", Loopback),
            ("http://[::1]/", Loopback),
            ("http://[::]/", Unspecified),
            ("http://[fc00::1]/", UniqueLocal),
            ("http://[fd12:3456::1]/", UniqueLocal),
            ("http://[fe80::1]/", LinkLocal),
            ("http://[ff02::1]/", Multicast),
            ("http://[::ffff:127.0.0.1]/", Loopback),
            ("http://[::ffff:169.254.169.254]/", LinkLocal),
            ("http://[::10.0.0.1]/", Private),
            ("http://[64:ff9b::a9fe:a9fe]/", LinkLocal),
            ("http://[2002:c0a8:0101::1]/", Private),
        ] {
            assert_eq!(forbidden_class(g.check_url(url)), class, "{url}");
        }
    }

    #[test]
    fn public_literals_pass_without_the_network() {
        let g = guard(&[]);
        for url in [
            "http://93.184.216.34/",
            "https://93.184.216.34:8443/hook?x=1",
            "http://[2606:2800:220:1:248:1893:25c8:1946]/",
            "http://[::ffff:93.184.216.34]/",
            "http://[64:ff9b::5db8:d822]/",
            "http://172.32.0.1/",
            "https://example.com/hook",
        ] {
            g.check_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn the_allowlist_opens_exactly_what_it_names() {
        let g = guard(&["127.0.0.1/32", "10.0.0.0/8", "fd00::1"]);
        g.check_url("http://127.0.0.1:9000/").unwrap();
        g.check_url("http://[::ffff:127.0.0.1]/").unwrap();
        g.check_url("http://10.200.0.1/").unwrap();
        g.check_url("http://[fd00::1]/").unwrap();
        assert_eq!(
            forbidden_class(g.check_url("http://127.0.0.2/")),
            AddressClass::Loopback
        );
        assert_eq!(
            forbidden_class(g.check_url("http://[fd00::2]/")),
            AddressClass::UniqueLocal
        );
        assert_eq!(
            forbidden_class(g.check_url("http://[::1]/")),
            AddressClass::Loopback
        );
    }

    #[test]
    fn bad_allowlist_entries_are_config_errors() {
        assert_eq!(
            UrlGuard::new(&["10.0.0.0/33".into()]).unwrap_err(),
            AllowlistError::InvalidEntry {
                entry: "10.0.0.0/33".into()
            }
        );
        assert!(UrlGuard::new(&["localhost".into()]).is_err());
        assert!(UrlGuard::new(&[" 192.168.0.0/16 ".into(), "::1".into()]).is_ok());
    }

    #[test]
    fn only_plain_http_urls_with_a_host_and_no_credentials_pass() {
        let g = guard(&[]);
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://example.com/",
            "javascript:alert(1)",
        ] {
            assert!(
                matches!(g.check_url(url), Err(SsrfError::UnsupportedScheme(_))),
                "{url}"
            );
        }
        assert!(matches!(
            g.check_url("http://user:pw@example.com/"),
            Err(SsrfError::Credentials)
        ));
        assert!(matches!(
            g.check_url("http://user@example.com/"),
            Err(SsrfError::Credentials)
        ));
        assert!(matches!(
            g.check_url("not a url"),
            Err(SsrfError::InvalidUrl(_))
        ));
    }

    #[test]
    fn metadata_host_names_are_refused_even_when_allowlisted() {
        let g = guard(&["169.254.0.0/16"]);
        for url in [
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./",
            "http://metadata/",
            "http://instance-data/latest/",
        ] {
            assert!(
                matches!(g.check_url(url), Err(SsrfError::MetadataHost(_))),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn resolution_refuses_internal_names() {
        let g = guard(&[]);
        let refused = g.resolve("localhost", 80).await.unwrap_err();
        assert!(matches!(refused, SsrfError::UnusableName(_)), "{refused:?}");
        // Neither the address nor its class is named, and an unknown name reads the same.
        let message = refused.to_string();
        assert!(
            !message.contains("127.0.0.1") && !message.contains("loopback"),
            "{message}"
        );
        let unknown = g.resolve("no-such-host.invalid", 80).await.unwrap_err();
        assert_eq!(
            unknown
                .to_string()
                .replace("no-such-host.invalid", "localhost"),
            message
        );
        assert!(matches!(
            g.resolve("metadata.google.internal", 80).await,
            Err(SsrfError::MetadataHost(_))
        ));
        assert!(matches!(
            g.resolve("[::1]", 80).await,
            Err(SsrfError::ForbiddenAddress { .. })
        ));
        let allowed = guard(&["127.0.0.0/8", "::1"]);
        let addrs = allowed.resolve("localhost", 8080).await.unwrap();
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
    }

    /// Answers every connection with an empty 200.
    async fn tiny_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn the_client_connects_only_to_allowed_addresses() {
        let port = tiny_server().await;
        let url = format!("http://localhost:{port}/");

        let refusing = http_client(Arc::new(guard(&[])), Duration::from_secs(5)).unwrap();
        let err = refusing.get(&url).send().await.unwrap_err();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut guarded = false;
        while let Some(e) = source {
            guarded |= matches!(
                e.downcast_ref::<SsrfError>(),
                Some(SsrfError::UnusableName(_))
            );
            source = e.source();
        }
        assert!(guarded, "refused for another reason: {err:?}");

        // localhost may also resolve to ::1, and any forbidden address refuses the name.
        let allowing = http_client(
            Arc::new(guard(&["127.0.0.1/32", "::1"])),
            Duration::from_secs(5),
        )
        .unwrap();
        let response = allowing.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}
