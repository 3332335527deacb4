//! What a follower's queue carries: events as delivered for its session
//! ([`Delivered`]: the shared event, the session and its sequence number),
//! or, for a follower that asked for the compact form, the session's
//! batches of them ([`Shared`]), and the stream's control items. Each
//! consumer makes the wire form it needs — the gRPC stream (`grpc`), the
//! OTLP exporter, the trace log — so an event nobody follows is never
//! converted, and one followed many times is made once.

use std::sync::Arc;

use qtap_proto::{
    time::Rfc3339,
    v1::{self, follow_item, CompactBatch, FollowItem, Heartbeat, Lost, SessionEnd},
};

use crate::events::Event;

#[derive(Clone, Debug)]
pub enum Item {
    Event(Delivered),
    Compact(Shared),
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

/// A batch of a session's events in the compact form, made once for all
/// its compact followers (`compact`). A follower that missed a batch gets
/// one with its definitions and no records.
#[derive(Clone, Debug)]
pub struct Shared {
    pub batch: Arc<CompactBatch>,
    /// Records in the batch.
    pub events: u64,
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
            // The last follower to send it takes the batch without a copy.
            Item::Compact(shared) => follow_item::Item::Compact(Arc::unwrap_or_clone(shared.batch)),
            Item::Lost(lost) => follow_item::Item::Lost(lost),
            Item::Heartbeat(beat) => follow_item::Item::Heartbeat(beat),
            Item::End(end) => follow_item::Item::End(end),
        };
        FollowItem { item: Some(item) }
    }
}
