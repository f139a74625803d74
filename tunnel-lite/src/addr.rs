//! Loopback addresses tunnel-lite owns on the laptop.
//!
//! `127.77.0.0/16` belongs to tunnel-lite: `127.77.0.x` is infrastructure (the DNS
//! responder listens on [`DNS_DEFAULT`]), and every connection the user may reach gets
//! a stable address in `127.77.1.1 ..= 127.77.255.254`. This module only computes
//! addresses; it binds nothing and knows nothing about DNS or the OS.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

/// Where the DNS responder listens unless configured otherwise.
pub const DNS_DEFAULT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 77, 0, 53), 53);

/// First two octets of every tunnel-lite address.
const PREFIX: [u8; 2] = [127, 77];
/// Third octets available to connections (`0` is infrastructure).
const THIRD_OCTETS: u32 = 255; // 1..=255
/// Fourth octets available to connections (never `.0` nor `.255`).
const FOURTH_OCTETS: u32 = 254; // 1..=254
/// How many connection addresses exist; `assign` can place at most this many names.
pub const CAPACITY: usize = (THIRD_OCTETS * FOURTH_OCTETS) as usize;

/// Gives each name a loopback address in `127.77.1.1 ..= 127.77.255.254`.
///
/// The address of a name is derived from FNV-1a 64 of its lowercased form, so it is the
/// same on every run, every laptop and every build. Names are placed in sorted order and
/// a collision probes linearly to the next free address, so the result depends only on
/// the *set* of names. Adding names keeps every existing name's address **unless** a new
/// name that sorts before it lands on the same slot: then the older name moves to the
/// next free slot. With 64,770 slots and a few hundred names this is rare, not impossible.
///
/// Keys of the result are the names as given. Names equal up to ASCII case share a hash
/// and therefore get neighbouring addresses; DNS cannot tell them apart, so callers should
/// pass each name once. Duplicates are ignored. Beyond [`CAPACITY`] names, the extra ones
/// (last in sorted order) get no address.
pub fn assign(names: &[String]) -> BTreeMap<String, Ipv4Addr> {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    sorted.dedup();

    let mut used = vec![0u64; CAPACITY.div_ceil(64)];
    let mut out = BTreeMap::new();
    for name in sorted {
        if out.len() >= CAPACITY {
            break;
        }
        let mut slot = (fnv1a64_lowercase(name.as_bytes()) % CAPACITY as u64) as usize;
        // Terminates: fewer than CAPACITY slots are taken (checked above).
        while used[slot / 64] & (1 << (slot % 64)) != 0 {
            slot = (slot + 1) % CAPACITY;
        }
        used[slot / 64] |= 1 << (slot % 64);
        out.insert(name.clone(), slot_address(slot));
    }
    out
}

/// Whether `ip` is in `127.77.0.0/16`, the block tunnel-lite owns (infrastructure and
/// connections). IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn is_tunnel_address(ip: impl Into<IpAddr>) -> bool {
    match ip.into().to_canonical() {
        IpAddr::V4(v4) => v4.octets()[..2] == PREFIX,
        IpAddr::V6(_) => false,
    }
}

/// Whether `ip` is one `assign` can hand out (`127.77.1.1 ..= 127.77.255.254`, not `.255`).
pub fn is_connection_address(ip: impl Into<IpAddr>) -> bool {
    match ip.into().to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            [a, b] == PREFIX && c >= 1 && (1..=254).contains(&d)
        }
        IpAddr::V6(_) => false,
    }
}

/// Slot `0 .. CAPACITY` to its address: row-major over third octet 1..=255, fourth 1..=254.
fn slot_address(slot: usize) -> Ipv4Addr {
    let slot = slot as u32 % (THIRD_OCTETS * FOURTH_OCTETS);
    let third = 1 + slot / FOURTH_OCTETS;
    let fourth = 1 + slot % FOURTH_OCTETS;
    // Both fit in a u8 by construction (third <= 255, fourth <= 254).
    Ipv4Addr::new(PREFIX[0], PREFIX[1], third as u8, fourth as u8)
}

/// FNV-1a 64 over the ASCII-lowercased bytes: fixed across runs, unlike std's hasher.
fn fnv1a64_lowercase(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, b| {
        (hash ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64_lowercase(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64_lowercase(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64_lowercase(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn stable_across_calls_and_order() {
        let a = assign(&names(&["pg-prod", "web-1", "grafana"]));
        let b = assign(&names(&["grafana", "pg-prod", "web-1", "pg-prod"]));
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        // Pinned so that a change of hash or layout is a visible, deliberate change.
        let h = fnv1a64_lowercase(b"pg-prod") % CAPACITY as u64;
        assert_eq!(a["pg-prod"], slot_address(h as usize));
    }

    #[test]
    fn adding_names_keeps_existing_addresses_without_collision() {
        let small = assign(&names(&["pg-prod", "web-1"]));
        let mut more = names(&["pg-prod", "web-1"]);
        more.extend((0..50).map(|i| format!("svc-{i}")));
        let big = assign(&more);
        assert_eq!(small["pg-prod"], big["pg-prod"]);
        assert_eq!(small["web-1"], big["web-1"]);
    }

    #[test]
    fn case_insensitive() {
        let lower = assign(&names(&["pg-prod"]));
        let upper = assign(&names(&["PG-Prod"]));
        assert_eq!(lower["pg-prod"], upper["PG-Prod"]);
    }

    #[test]
    fn no_duplicates_and_never_dot0_or_dot255_for_5000_names() {
        let many: Vec<String> = (0..5000).map(|i| format!("conn-{i}.x")).collect();
        let map = assign(&many);
        assert_eq!(map.len(), 5000);
        let distinct: BTreeSet<_> = map.values().collect();
        assert_eq!(distinct.len(), 5000);
        for ip in map.values() {
            let [a, b, c, d] = ip.octets();
            assert_eq!([a, b], PREFIX);
            assert!(c >= 1, "{ip}");
            assert!(d != 0 && d != 255, "{ip}");
            assert!(is_connection_address(*ip) && is_tunnel_address(*ip));
        }
    }

    #[test]
    fn every_slot_is_a_valid_distinct_address() {
        let all: BTreeSet<Ipv4Addr> = (0..CAPACITY).map(slot_address).collect();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all.first(), Some(&Ipv4Addr::new(127, 77, 1, 1)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(127, 77, 255, 254)));
        assert!(all.iter().all(|ip| is_connection_address(*ip)));
    }

    #[test]
    fn full_capacity_probes_into_every_slot() {
        let many: Vec<String> = (0..CAPACITY + 3).map(|i| format!("n{i}")).collect();
        let map = assign(&many);
        assert_eq!(map.len(), CAPACITY);
        let distinct: BTreeSet<_> = map.values().collect();
        assert_eq!(distinct.len(), CAPACITY);
    }

    #[test]
    fn address_classification() {
        assert_eq!(DNS_DEFAULT.to_string(), "127.77.0.53:53");
        assert!(is_tunnel_address(*DNS_DEFAULT.ip()));
        assert!(!is_connection_address(*DNS_DEFAULT.ip()));
        assert!(!is_tunnel_address(Ipv4Addr::LOCALHOST));
        assert!(!is_connection_address(Ipv4Addr::new(127, 77, 3, 255)));
        assert!(!is_connection_address(Ipv4Addr::new(127, 77, 3, 0)));
        let mapped: IpAddr = "::ffff:127.77.1.10".parse().unwrap();
        assert!(is_tunnel_address(mapped) && is_connection_address(mapped));
        assert!(!is_tunnel_address(IpAddr::from(
            std::net::Ipv6Addr::LOCALHOST
        )));
    }
}
