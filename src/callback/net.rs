//! Where a callback may go (CONTRACT §5 URL rules) and which addresses it may
//! dial. The tenant chooses the URL, so without these rules it would be a way
//! to make our servers call into a private network (SSRF).
//!
//! Names are checked on the address actually dialled: [`VettedResolver`]
//! resolves, drops blocked addresses and hands reqwest only what is left, so
//! a DNS answer that changes between a check and the connect cannot reach a
//! private host. IP-literal URLs never reach a resolver and are checked by
//! [`Rules::check_url`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The longest `callback_url` accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL or an address is refused; `as_str` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a valid absolute URL: {0}")]
    Invalid(String),
    #[error("only https callbacks are allowed (DEDUP2D_CALLBACK_ALLOW_HTTP=1 allows http)")]
    Scheme,
    #[error("the URL may not carry a user name or password")]
    Userinfo,
    #[error("host `{0}` is not in DEDUP2D_CALLBACK_ALLOWLIST")]
    NotAllowlisted(String),
    #[error("{0} is a private, loopback or reserved address")]
    PrivateAddress(String),
    #[error("host `{0}` does not resolve")]
    Unresolvable(String),
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid_url",
            Refusal::Scheme => "scheme",
            Refusal::Userinfo => "userinfo",
            Refusal::NotAllowlisted(_) => "allowlist",
            Refusal::PrivateAddress(_) => "private_network",
            Refusal::Unresolvable(_) => "dns",
        }
    }
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = text.trim().split_once('/').unwrap_or((text.trim(), ""));
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an address/prefix"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has no prefix length between 0 and {max}"))?
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
            let shift = bits - prefix;
            prefix == 0 || (a >> shift) == (b >> shift)
        }
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

/// Not publicly routable: loopback, RFC 1918, link-local, CGNAT, multicast,
/// reserved, documentation, benchmarking, unspecified, IPv6 ULA and
/// link-local, discard, and the IPv6 forms that embed an IPv4 address
/// (checked through it).
const SPECIAL: &[Cidr] = &[
    Cidr::v4(0, 0, 0, 0, 8),
    Cidr::v4(10, 0, 0, 0, 8),
    Cidr::v4(100, 64, 0, 0, 10),
    Cidr::v4(127, 0, 0, 0, 8),
    Cidr::v4(169, 254, 0, 0, 16),
    Cidr::v4(172, 16, 0, 0, 12),
    Cidr::v4(192, 0, 0, 0, 24),
    Cidr::v4(192, 0, 2, 0, 24),
    Cidr::v4(192, 88, 99, 0, 24),
    Cidr::v4(192, 168, 0, 0, 16),
    Cidr::v4(198, 18, 0, 0, 15),
    Cidr::v4(198, 51, 100, 0, 24),
    Cidr::v4(203, 0, 113, 0, 24),
    Cidr::v4(224, 0, 0, 0, 4),
    Cidr::v4(240, 0, 0, 0, 4),
    // Unspecified, loopback and the deprecated IPv4-compatible ::a.b.c.d.
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
    // IPv4-translated (::ffff:0:a.b.c.d) and local-use NAT64.
    Cidr::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),
    Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
    Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
    Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
    Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
    Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
    Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
];

/// The IPv4 address inside an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4
/// (2002::/16) IPv6 address, which is where a packet to it really goes.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let from = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(from(s[6], s[7]));
    }
    (s[0] == 0x2002).then(|| from(s[1], s[2]))
}

/// Which addresses callbacks may dial.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    pub block_private: bool,
    /// Refused even when public (`DEDUP2D_CALLBACK_BLOCKED_CIDRS`).
    pub blocked: Vec<Cidr>,
    /// Allowed even when private (`DEDUP2D_CALLBACK_ALLOWED_CIDRS`); wins
    /// over both lists above.
    pub allowed: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return true;
        }
        if self.blocked.iter().any(|c| c.contains(ip)) {
            return false;
        }
        !(self.block_private && SPECIAL.iter().any(|c| c.contains(ip)))
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(Refusal::PrivateAddress(ip.to_string()))
        }
    }
}

/// CONTRACT §5's URL rules plus the address policy.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub allow_http: bool,
    /// Exact host names; empty allows any.
    pub allowlist: Vec<String>,
    pub addresses: AddressPolicy,
}

impl Rules {
    /// Everything that can be checked without DNS; an IP-literal host is
    /// checked against the address policy here.
    pub fn check_url(&self, text: &str) -> Result<reqwest::Url, Refusal> {
        if text.len() > MAX_URL_LEN {
            return Err(Refusal::Invalid(format!("longer than {MAX_URL_LEN} characters")));
        }
        let url = reqwest::Url::parse(text).map_err(|e| Refusal::Invalid(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(Refusal::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Userinfo);
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => {
                self.addresses.check(IpAddr::V4(ip))?;
                ip.to_string()
            }
            Some(url::Host::Ipv6(ip)) => {
                self.addresses.check(IpAddr::V6(ip))?;
                ip.to_string()
            }
            None => return Err(Refusal::Invalid("no host".into())),
        };
        if !self.allowlist.is_empty() && !self.allowlist.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return Err(Refusal::NotAllowlisted(host));
        }
        Ok(url)
    }

    /// `check_url`, then (for `DEDUP2D_CALLBACK_RESOLVE_DNS=1` at submit)
    /// every address the name resolves to.
    pub async fn check_url_resolving(&self, text: &str) -> Result<reqwest::Url, Refusal> {
        let url = self.check_url(text)?;
        if let Some(url::Host::Domain(name)) = url.host() {
            vetted(&self.addresses, name).await?;
        }
        Ok(url)
    }
}

/// A name that does not resolve in this long is treated as unresolvable.
const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The addresses of `name` that the policy allows; refused when none is.
async fn vetted(policy: &AddressPolicy, name: &str) -> Result<Vec<SocketAddr>, Refusal> {
    let unresolvable = || Refusal::Unresolvable(name.to_string());
    let resolved: Vec<SocketAddr> = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| unresolvable())?
        .map_err(|_| unresolvable())?
        .collect();
    let first_refused = resolved.iter().find(|a| !policy.allows(a.ip())).map(|a| a.ip());
    let allowed: Vec<SocketAddr> = resolved.iter().copied().filter(|a| policy.allows(a.ip())).collect();
    match (allowed.is_empty(), first_refused) {
        (false, _) => Ok(allowed),
        (true, Some(ip)) => Err(Refusal::PrivateAddress(format!("{name} ({ip})"))),
        (true, None) => Err(Refusal::Unresolvable(name.to_string())),
    }
}

/// reqwest's resolver for callbacks: only vetted addresses are dialled.
pub struct VettedResolver(pub Arc<AddressPolicy>);

impl reqwest::dns::Resolve for VettedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let allowed = vetted(&policy, name.as_str()).await?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocking() -> AddressPolicy {
        AddressPolicy {
            block_private: true,
            ..AddressPolicy::default()
        }
    }

    #[test]
    fn private_and_special_addresses_are_blocked_in_every_spelling() {
        let policy = blocking();
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "64:ff9b:1::a00:1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!policy.allows(ip), "{private} allowed");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(policy.allows(ip), "{public} blocked");
        }
        assert!(
            AddressPolicy::default().allows("127.0.0.1".parse().unwrap()),
            "blocking off"
        );
    }

    #[test]
    fn operators_lists_adjust_the_policy() {
        let policy = AddressPolicy {
            block_private: true,
            blocked: vec!["8.8.0.0/16".parse().unwrap()],
            allowed: vec!["10.20.0.0/16".parse().unwrap(), "::1".parse().unwrap()],
        };
        assert!(policy.allows("10.20.3.4".parse().unwrap()));
        assert!(!policy.allows("10.21.3.4".parse().unwrap()));
        assert!(!policy.allows("8.8.8.8".parse().unwrap()));
        assert!(policy.allows("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "nonsense".parse::<Cidr>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn url_rules_follow_the_contract() {
        let rules = Rules {
            allow_http: false,
            allowlist: vec![],
            addresses: blocking(),
        };
        assert!(rules.check_url("https://hooks.example.com/x?y=1").is_ok());
        let refused = |url: &str| rules.check_url(url).unwrap_err().as_str();
        assert_eq!(refused("http://hooks.example.com/x"), "scheme");
        assert_eq!(refused("ftp://hooks.example.com/x"), "scheme");
        assert_eq!(refused("https://user:pw@hooks.example.com/x"), "userinfo");
        assert_eq!(refused("https://127.0.0.1/x"), "private_network");
        assert_eq!(refused("https://[::1]/x"), "private_network");
        assert_eq!(refused("https://10.0.0.8:8443/x"), "private_network");
        assert_eq!(refused("not a url"), "invalid_url");
        assert_eq!(
            refused(&format!("https://a.example/{}", "x".repeat(MAX_URL_LEN))),
            "invalid_url"
        );
        let listed = Rules {
            allowlist: vec!["hooks.example.com".into()],
            ..rules.clone()
        };
        assert!(listed.check_url("https://HOOKS.example.com/x").is_ok());
        assert_eq!(
            listed.check_url("https://evil.example/x").unwrap_err().as_str(),
            "allowlist"
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_allowed() {
        let rules = Rules {
            allow_http: true,
            allowlist: vec![],
            addresses: blocking(),
        };
        let refusal = rules.check_url_resolving("http://localhost:9/hook").await.unwrap_err();
        assert_eq!(refusal.as_str(), "private_network", "{refusal}");
        let open = Rules {
            addresses: AddressPolicy {
                allowed: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
                ..blocking()
            },
            ..rules
        };
        assert!(open.check_url_resolving("http://localhost:9/hook").await.is_ok());
    }
}
