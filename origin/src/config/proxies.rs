//! `DROPS_TRUSTED_PROXIES`: whose `X-Forwarded-For` the origin believes (`client_address`).

use std::net::IpAddr;

use ipnet::IpNet;

/// `DROPS_TRUSTED_PROXIES`: comma-separated CIDRs (a bare address is one host).
pub fn parse_proxies(list: &str) -> anyhow::Result<Vec<IpNet>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map(|net| net.trunc()).map_err(|_| {
                anyhow::anyhow!("DROPS_TRUSTED_PROXIES: `{s}` is not a CIDR (like 10.0.0.0/8) or an address")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_are_cidrs_or_addresses() {
        assert!(parse_proxies("").unwrap().is_empty());
        assert_eq!(parse_proxies(" 10.0.0.0/8 ,, ::1 ").unwrap().len(), 2);
        assert_eq!(parse_proxies("10.1.2.3/8").unwrap()[0].to_string(), "10.0.0.0/8", "host bits dropped");
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/8;1.2.3.4"] {
            assert!(parse_proxies(bad).unwrap_err().to_string().contains("DROPS_TRUSTED_PROXIES"), "{bad}");
        }
    }
}
