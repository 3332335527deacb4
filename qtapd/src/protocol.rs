//! Protocol detection from the first bytes of a stream: the ciphertext of
//! a syscall, or the plaintext of a TLS library call. Pure functions; the
//! once-per-fd bookkeeping lives in `streams`.

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected {
    /// `tls`, `http1`, `http2` or `dns`.
    pub protocol: &'static str,
    /// For `tls`: the record header's version.
    pub tls_version: Option<&'static str>,
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const DNS_PORT: u16 = 53;

/// Classifies `head`, the first bytes moved on a stream. `ports` are the
/// connection's local and remote ports when known; `datagram` tells a UDP
/// (or other datagram) socket. `None`: nothing recognised.
#[must_use]
pub fn detect(head: &[u8], ports: [Option<u16>; 2], datagram: bool) -> Option<Detected> {
    if let Some(version) = tls_record_version(head) {
        return Some(Detected {
            protocol: "tls",
            tls_version: Some(version),
        });
    }
    let plain = |protocol| {
        Some(Detected {
            protocol,
            tls_version: None,
        })
    };
    // A short first write may hold only part of the preface.
    if head.len() >= 14 && HTTP2_PREFACE.starts_with(head.get(..24).unwrap_or(head)) {
        return plain("http2");
    }
    if HTTP_METHODS.iter().any(|m| head.starts_with(m)) || head.starts_with(b"HTTP/1.") {
        return plain("http1");
    }
    if ports.contains(&Some(DNS_PORT)) || (datagram && dns_header_shape(head)) {
        return plain("dns");
    }
    None
}

/// Whether `head` begins with a TLS record header.
#[must_use]
pub fn is_tls_record(head: &[u8]) -> bool {
    tls_record_version(head).is_some()
}

/// The version of a TLS record header (content type 20..=23, major 3).
fn tls_record_version(head: &[u8]) -> Option<&'static str> {
    let [content_type, 3, minor, ..] = *head else {
        return None;
    };
    if !(0x14..=0x17).contains(&content_type) {
        return None;
    }
    match minor {
        0 => Some("SSL3.0"),
        1 => Some("TLS1.0"),
        2 => Some("TLS1.1"),
        3 => Some("TLS1.2"),
        4 => Some("TLS1.3"),
        _ => None,
    }
}

/// A DNS message header: a standard query or response (opcode 0, Z bit
/// clear) with one question and few records.
fn dns_header_shape(head: &[u8]) -> bool {
    let Some(h) = head.get(..12) else {
        return false;
    };
    let count = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let opcode = (h[2] >> 3) & 0xf;
    let z = h[3] & 0x40;
    opcode == 0 && z == 0 && count(4) == 1 && count(6) < 64 && count(8) < 64 && count(10) < 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(head: &[u8]) -> Option<&'static str> {
        detect(head, [None, None], false).map(|d| d.protocol)
    }

    #[test]
    fn tls_with_its_record_version() {
        let client_hello = [0x16, 3, 1, 0x02, 0x00, 0x01];
        assert_eq!(
            detect(&client_hello, [None, None], false),
            Some(Detected {
                protocol: "tls",
                tls_version: Some("TLS1.0")
            })
        );
        let app_data = [0x17, 3, 3, 0, 40];
        assert_eq!(
            detect(&app_data, [None, None], false).and_then(|d| d.tls_version),
            Some("TLS1.2")
        );
        assert_eq!(name(&[0x16, 3, 9]), None);
        assert_eq!(name(&[0x18, 3, 1]), None);
        assert_eq!(name(&[0x16, 3]), None);
    }

    #[test]
    fn http_versions() {
        assert_eq!(name(b"GET /file HTTP/1.1\r\n"), Some("http1"));
        assert_eq!(name(b"HTTP/1.1 200 OK\r\n"), Some("http1"));
        assert_eq!(name(b"POST /x HTTP/1.0"), Some("http1"));
        assert_eq!(name(HTTP2_PREFACE), Some("http2"));
        assert_eq!(name(&HTTP2_PREFACE[..16]), Some("http2"));
        assert_eq!(name(b"GETX / HTTP/1.1"), None);
        assert_eq!(name(b"hello"), None);
        assert_eq!(name(b""), None);
    }

    #[test]
    fn dns_by_port_or_shape() {
        let query = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w'];
        assert_eq!(
            detect(&query, [None, None], true).map(|d| d.protocol),
            Some("dns")
        );
        // The shape alone is not enough on a stream socket.
        assert_eq!(detect(&query, [None, None], false), None);
        assert_eq!(
            detect(b"\x00\x1d", [Some(40000), Some(53)], false).map(|d| d.protocol),
            Some("dns")
        );
        let not_dns = [0u8; 12];
        assert_eq!(detect(&not_dns, [None, None], true), None);
    }
}
