//! What a follower's queue carries: events as delivered for its session
//! ([`Delivered`]: the shared event, the session and its sequence number)
//! and the stream's control items. Each consumer makes the wire form it
//! needs — the gRPC stream (`grpc`), the OTLP exporter, the trace log —
//! so an event nobody follows is never converted, and one followed many
//! times is made once.

use std::sync::Arc;

use qtap_proto::{
    time::Rfc3339,
    v1::{self, follow_item, FollowItem, Heartbeat, Lost, SessionEnd},
};

use crate::events::Event;

#[derive(Clone, Debug)]
pub enum Item {
    Event(Delivered),
    Lost(Lost),
    Heartbeat(Heartbeat),
    End(SessionEnd),
}

/// One event as delivered to one session.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub event: Arc<Event>,
    /// The session's id.
    pub session: Arc<str>,
    /// The session's sequence number of this event.
    pub seq: u64,
    /// Payload bytes the session keeps.
    pub capture: u32,
}

impl Delivered {
    /// The `qtap.v1.Event` message.
    #[must_use]
    pub fn to_wire(&self, time: &mut Rfc3339) -> v1::Event {
        self.event
            .to_wire(&self.session, self.seq, self.capture, time)
    }

    /// The payload the session keeps.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        self.event.payload(self.capture)
    }
}

impl Item {
    /// The item as one message of a plain stream.
    #[must_use]
    pub fn to_wire(self, time: &mut Rfc3339) -> FollowItem {
        let item = match self {
            Item::Event(d) => follow_item::Item::Event(d.to_wire(time)),
            Item::Lost(lost) => follow_item::Item::Lost(lost),
            Item::Heartbeat(beat) => follow_item::Item::Heartbeat(beat),
            Item::End(end) => follow_item::Item::End(end),
        };
        FollowItem { item: Some(item) }
    }
}
