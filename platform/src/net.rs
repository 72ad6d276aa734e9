//! Which network addresses an outgoing call chosen by a customer (a webhook
//! URL) may reach. A bank's internal services, the cloud's metadata endpoint
//! and the host itself must not be reachable by registering a URL that
//! points at them (server-side request forgery): only public unicast
//! addresses are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `address` is a public unicast address: not loopback, private,
/// link-local, shared (CGNAT), documentation, benchmarking, multicast,
/// reserved or unspecified; IPv4-mapped and IPv4-compatible IPv6 addresses
/// are judged as the IPv4 address they carry.
#[must_use]
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    let blocked = address.is_unspecified()
        || address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_broadcast()
        || address.is_documentation()
        || address.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240; // reserved
    !blocked
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    let segments = address.segments();
    let blocked = address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x0064 && segments[1] == 0xff9b) // NAT64 (embeds IPv4)
        || (segments[0] == 0x2002) // 6to4 (embeds IPv4)
        || (segments[0] == 0x2001 && segments[1] == 0) // Teredo (embeds IPv4)
        || (segments[0] == 0x0100 && segments[1..4].iter().all(|segment| *segment == 0)) // discard-only
        // IPv4-translated (SIIT) ::ffff:0:a.b.c.d
        || (segments[..4].iter().all(|segment| *segment == 0) && segments[4] == 0xffff && segments[5] == 0)
        // IPv4-compatible (deprecated) ::a.b.c.d
        || segments[..6].iter().all(|segment| *segment == 0);
    !blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.10",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2001:db8::1",
            "ff02::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
            "::ffff:0:7f00:1",
        ] {
            let address: IpAddr = text.parse().expect("address");
            assert!(!is_public(address), "{text} counted as public");
        }
    }

    #[test]
    fn public_addresses_are() {
        for text in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            let address: IpAddr = text.parse().expect("address");
            assert!(is_public(address), "{text} counted as internal");
        }
    }
}
