//! NBD URLs as qemu and libnbd write them, the plain-TCP form: `nbd://HOST[:PORT]/EXPORT`.

use std::fmt;
use std::str::FromStr;

use crate::MAX_STRING_BYTES;

/// The port NBD servers listen on unless told otherwise (IANA).
pub const DEFAULT_PORT: u16 = 10809;

/// `nbd://HOST[:PORT]/EXPORT` (port 10809 if not given; an empty export name asks for the
/// server's only export).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUrl {
    pub host: String,
    pub port: u16,
    pub export: String,
}

impl FromStr for NbdUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not nbd://HOST[:PORT]/EXPORT: {why}");
        let rest = text
            .strip_prefix("nbd://")
            .ok_or_else(|| bad("it does not start with nbd://"))?;
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("no ] after ["))?;
                match after {
                    "" => (host, None),
                    _ => (
                        host,
                        Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                    ),
                }
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        if export.len() > MAX_STRING_BYTES || export.contains(['\0', '?', '#']) {
            return Err(bad("the export name is too long or has ?, # or NUL"));
        }
        Ok(NbdUrl {
            host: host.to_string(),
            port,
            export: export.to_string(),
        })
    }
}

impl fmt::Display for NbdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "nbd://[{}]:{}/{}", self.host, self.port, self.export),
            false => write!(f, "nbd://{}:{}/{}", self.host, self.port, self.export),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_export() {
        let url: NbdUrl = "nbd://127.0.0.1:10900/data".parse().unwrap();
        assert_eq!(
            url,
            NbdUrl {
                host: "127.0.0.1".into(),
                port: 10900,
                export: "data".into()
            }
        );
        assert_eq!(url.to_string(), "nbd://127.0.0.1:10900/data");
        let v6: NbdUrl = "nbd://[::1]/vol".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", DEFAULT_PORT));
        assert_eq!(v6.to_string(), "nbd://[::1]:10809/vol");
        let bare: NbdUrl = "nbd://example".parse().unwrap();
        assert_eq!((bare.port, bare.export.as_str()), (DEFAULT_PORT, ""));
        for bad in [
            "http://x/y",
            "nbd:///data",
            "nbd://h:0/d",
            "nbd://h:99999/d",
            "nbd://[::1/d",
            "nbd://h/d?tls=1",
        ] {
            assert!(bad.parse::<NbdUrl>().is_err(), "{bad} was accepted");
        }
    }
}
