//! Which addresses a pull asked for over the network may connect to. A request must not be
//! able to make the server fetch from itself, the LAN or a cloud metadata service (SSRF): by
//! default only public addresses are reached, plus the ranges `pull.allow` names.
//!
//! The check happens where the connection is made: a DNS resolver that drops forbidden
//! addresses (so a name that resolves, or later re-resolves, to 127.0.0.1 fails), and a
//! redirect policy for IP-literal targets (which skip DNS). `hearth pull` on the command line
//! is the local user's own choice and reaches anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    base: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpRange {
    type Err = String;
    fn from_str(s: &str) -> Result<IpRange, String> {
        let (addr, prefix) = s.trim().split_once('/').map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let base: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address or a range like 10.0.0.0/8"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpRange { base, prefix })
    }
}

impl IpRange {
    fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u32) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((base, width), (addr, other)) = (bits(self.base), bits(ip));
        if width != other {
            return false;
        }
        let shift = u32::from(width as u8 - self.prefix);
        shift >= width || (base >> shift) == (addr >> shift)
    }
}

/// Where a pull may connect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reach {
    /// `None`: anywhere (the command line). `Some(allowed)`: public addresses and these.
    allowed: Option<Vec<IpRange>>,
}

impl Reach {
    pub fn anywhere() -> Reach {
        Reach { allowed: None }
    }

    pub fn public_and(allowed: Vec<IpRange>) -> Reach {
        Reach { allowed: Some(allowed) }
    }

    /// Why `ip` may not be reached, if it may not.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let allowed = self.allowed.as_ref()?;
        let kind = non_public(ip)?;
        (!allowed.iter().any(|r| r.contains(ip))).then_some(kind)
    }

    /// A resolver for reqwest that keeps only reachable addresses.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { reach: self.clone() })
    }

    /// The redirect policy: http(s) only, at most 10 hops, IP literals checked here (names are
    /// checked by the resolver when connecting).
    pub fn redirects(&self) -> reqwest::redirect::Policy {
        let reach = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("more than 10 redirects");
            }
            match reach.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        })
    }

    /// The URL's scheme, and its host when it is an address.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("pulls use http or https, not {}", url.scheme()));
        }
        let host = url.host_str().unwrap_or("");
        let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
            return Ok(());
        };
        match self.refuses(ip) {
            Some(kind) => Err(refusal(&ip.to_string(), kind)),
            None => Ok(()),
        }
    }
}

fn refusal(host: &str, kind: &str) -> String {
    format!("{host} is a {kind} address: a pull asked over the network may reach only public addresses (allow ranges in pull.allow)")
}

/// The kind of a non-public address, or `None` for a public one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return non_public_v4(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, _, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT, cloud metadata)")
    } else if a == 0 || ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("protocol-assignment")
    } else if a == 198 && (18..20).contains(&b) {
        Some("benchmarking")
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

/// reqwest's resolver, filtered: a name whose every address is refused fails to connect.
pub struct GuardedResolver {
    reach: Reach,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.reach.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match reach.refuses(a.ip()) {
                    Some(kind) => {
                        refused.get_or_insert((a.ip(), kind));
                        false
                    }
                    None => true,
                })
                .collect();
            if kept.is_empty() {
                let message = match refused {
                    Some((ip, kind)) => refusal(&format!("{host} ({ip})"), kind),
                    None => format!("{host} has no addresses"),
                };
                return Err(message.into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_refused() {
        let reach = Reach::public_and(Vec::new());
        for bad in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200", "0.0.0.0", "::1", "::", "fd00:ec2::254", "fe80::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "224.0.0.1", "255.255.255.255"] {
            assert!(reach.refuses(ip(bad)).is_some(), "{bad}");
        }
        for good in ["1.1.1.1", "18.160.1.2", "2606:4700::1111", "172.32.0.1", "100.128.0.1"] {
            assert_eq!(reach.refuses(ip(good)), None, "{good}");
        }
        assert_eq!(Reach::anywhere().refuses(ip("127.0.0.1")), None);
    }

    #[test]
    fn allowed_ranges_open_exactly_themselves() {
        let reach = Reach::public_and(vec!["10.0.0.0/8".parse().expect("range"), "127.0.0.1".parse().expect("one")]);
        assert_eq!(reach.refuses(ip("10.200.0.1")), None);
        assert_eq!(reach.refuses(ip("127.0.0.1")), None);
        assert!(reach.refuses(ip("127.0.0.2")).is_some());
        assert!(reach.refuses(ip("192.168.0.1")).is_some());
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("localhost".parse::<IpRange>().is_err());
        assert!("::/0".parse::<IpRange>().expect("all v6").contains(ip("::1")));
    }

    #[test]
    fn urls_need_http_and_a_public_literal() {
        let reach = Reach::public_and(Vec::new());
        let url = |s: &str| reqwest::Url::parse(s).expect("url");
        assert!(reach.check_url(&url("https://huggingface.co/x.gguf")).is_ok());
        assert!(reach.check_url(&url("http://[::1]:8080/x.gguf")).expect_err("loopback").contains("loopback"));
        assert!(reach.check_url(&url("http://169.254.169.254/latest/meta-data")).is_err());
        assert!(reach.check_url(&url("file:///etc/passwd")).is_err());
    }
}
