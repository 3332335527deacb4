//! Events derived from another event: a protocol detection (module
//! `protocol`) and the data decision (module `data`, Qtap's
//! `process_data` messages), which says what was done with an event's
//! bytes and why, so that no bytes go unaccounted.

use super::{Event, Text};

/// What enrichment learned beside the event itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// The event's bytes showed its fd's protocol (or, for a TLS call, the
    /// protocol inside TLS) for the first time.
    pub detected: bool,
    /// An `SSL*` is bound to the event's fd, so its plaintext is seen
    /// through the openssl module.
    pub bound: bool,
}

/// `protocol/detected` for the fd of `event`.
#[must_use]
pub fn protocol_event(event: &Event) -> Event {
    Event {
        msg: Text::Static("protocol/detected"),
        new_fd: None,
        direction: None,
        bytes: None,
        ret: None,
        error: None,
        peek: false,
        ..event.clone()
    }
}

/// The data decision for `event`, when it is a data event.
#[must_use]
pub fn data_event(event: &Event, notes: Notes) -> Option<Event> {
    let reason = reason(event, notes)?;
    Some(Event {
        msg: Text::from(format!("process_data ({reason})")),
        ..event.clone()
    })
}

fn reason(event: &Event, notes: Notes) -> Option<String> {
    let bytes = event.bytes?;
    let msg = event.msg.as_str();
    let call = msg.rsplit('/').next().unwrap_or_default();
    if qtap_proto::is_tls_library_msg(msg) {
        let library = msg.split('/').next().unwrap_or_default();
        return Some(if bytes <= 0 {
            format!(
                "no bytes: {call} returned {}",
                event.ret.unwrap_or_default()
            )
        } else if event.fd.is_none() {
            match library {
                "gotls" => "plaintext via gotls; fd unknown: the tls.Conn is not over a net.Conn \
                     of package net"
                    .to_owned(),
                "gnutls" => format!(
                    "plaintext via {library}; fd unknown: no gnutls_transport_set_* or nested \
                     syscall seen"
                ),
                _ => format!(
                    "plaintext via {library}; fd unknown: no SSL_set_fd, nested syscall or \
                     adjacent ciphertext seen"
                ),
            }
        } else {
            format!("plaintext via {library}")
        });
    }
    Some(if event.peek {
        "peek; the bytes count at the read that consumes them".into()
    } else if bytes < 0 {
        format!(
            "no bytes: {}",
            event.error.as_ref().map_or("error", Text::as_str)
        )
    } else if bytes == 0 {
        "no bytes".into()
    } else if event.conn_info.is_none() {
        "conn_info = NULL".into()
    } else if event.ssl == Some(true) && notes.bound {
        "ciphertext; plaintext via openssl".into()
    } else if event.ssl == Some(true) {
        "ciphertext; no SSL_* call bound to this fd (yet), plaintext unavailable".into()
    } else {
        "plaintext".into()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::events::ConnInfo;

    fn data(msg: &'static str, bytes: i64) -> Event {
        Event {
            msg: msg.into(),
            fd: Some(3),
            bytes: Some(bytes),
            ret: Some(bytes),
            ssl: Some(false),
            conn_info: Some(Arc::new(ConnInfo::default())),
            ..Event::default()
        }
    }

    fn msg(event: &Event, notes: Notes) -> String {
        data_event(event, notes)
            .map(|e| e.msg.as_str().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn every_data_event_says_why() {
        let none = Notes::default();
        let bound = Notes {
            bound: true,
            ..Notes::default()
        };
        let mut e = data("syscall/writev", 120);
        assert_eq!(msg(&e, none), "process_data (plaintext)");
        e.ssl = Some(true);
        assert_eq!(
            msg(&e, bound),
            "process_data (ciphertext; plaintext via openssl)"
        );
        assert!(msg(&e, none).contains("plaintext unavailable"));
        e.conn_info = None;
        e.ssl = Some(false);
        assert_eq!(msg(&e, none), "process_data (conn_info = NULL)");
        let mut failed = data("syscall/read", -11);
        failed.error = Some(Text::Static("EAGAIN"));
        assert_eq!(msg(&failed, none), "process_data (no bytes: EAGAIN)");
        let mut peek = data("syscall/recvfrom", 5);
        peek.peek = true;
        assert!(msg(&peek, none).starts_with("process_data (peek"));
        let mut tls = data("openssl/SSL_read", 0);
        tls.ret = Some(-1);
        assert_eq!(
            msg(&tls, none),
            "process_data (no bytes: SSL_read returned -1)"
        );
        tls.bytes = Some(10);
        tls.fd = None;
        assert!(msg(&tls, none).contains("fd unknown"));
        // Control calls are not data events.
        let connect = Event {
            msg: "syscall/connect".into(),
            ..Event::default()
        };
        assert_eq!(data_event(&connect, none), None);
    }

    #[test]
    fn protocol_event_keeps_the_fd_and_drops_the_call() {
        let mut e = data("syscall/write", 40);
        e.protocol = Some("http1");
        let p = protocol_event(&e);
        assert_eq!(p.msg.as_str(), "protocol/detected");
        assert_eq!((p.fd, p.bytes), (Some(3), None));
        assert_eq!(p.protocol, Some("http1"));
    }
}
