//! A follower's stream: what is queued for it when the stream is polled
//! goes out in the form it asked for. Plain: one message per item.
//! Batched: runs of events as one `EventBatch`, loss notices and
//! heartbeats on their own. Compact: the session's `CompactBatch`es as
//! the hub made them (`engine::compact`), each one message. Nothing waits
//! to fill a batch, so a quiet session sees each event as soon as it
//! happens.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use qtap_proto::{
    time::Rfc3339,
    v1::{follow_item, EventBatch, FollowItem},
};
use tokio_stream::Stream;

use crate::engine::{item::Item, queue::Receiver};

/// Most items taken from the queue at once, and events in an `EventBatch`.
const MAX_BATCH: usize = 512;

/// How a follower's items go out (`FollowTraceRequest`): one message
/// each (plain, and compact, whose items are already batches), or runs
/// of events as one `EventBatch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Plain,
    Batched,
}

pub struct Batches {
    rx: Receiver,
    form: Form,
    /// Messages made from one take, not sent yet.
    ready: VecDeque<FollowItem>,
    taken: Vec<Item>,
    time: Rfc3339,
}

impl Batches {
    pub fn new(rx: Receiver, form: Form) -> Batches {
        Batches {
            rx,
            form,
            ready: VecDeque::new(),
            taken: Vec::with_capacity(MAX_BATCH),
            time: Rfc3339::new(),
        }
    }

    /// Turns `taken` into messages, in order.
    fn group(&mut self) {
        let Batches {
            form,
            ready,
            taken,
            time,
            ..
        } = self;
        let mut events = Vec::new();
        for item in taken.drain(..) {
            match (item, *form) {
                (Item::Event(d), Form::Batched) => events.push(d.to_wire(time)),
                (other, _) => {
                    flush(ready, &mut events);
                    ready.push_back(other.to_wire(time));
                }
            }
        }
        flush(ready, &mut events);
    }
}

/// The run of events gathered so far, as one message.
fn flush(ready: &mut VecDeque<FollowItem>, events: &mut Vec<qtap_proto::v1::Event>) {
    if events.is_empty() {
        return;
    }
    let batch = EventBatch {
        events: std::mem::take(events),
    };
    ready.push_back(FollowItem {
        item: Some(follow_item::Item::Batch(batch)),
    });
}

impl Stream for Batches {
    type Item = FollowItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FollowItem>> {
        let this = self.get_mut();
        if let Some(item) = this.ready.pop_front() {
            return Poll::Ready(Some(item));
        }
        match this.rx.poll_recv_many(cx, &mut this.taken, MAX_BATCH) {
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => {
                this.group();
                Poll::Ready(this.ready.pop_front())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use qtap_proto::v1::{follow_item::Item as Wire, Heartbeat};
    use tokio_stream::StreamExt;

    use super::*;
    use crate::{engine::item::Delivered, events::Event};

    fn event(seq: u64) -> Item {
        Item::Event(Delivered {
            event: Arc::new(Event::default()),
            session: "s1".into(),
            seq,
            capture: 0,
        })
    }

    async fn items(form: Form) -> Vec<Wire> {
        let (mut tx, rx) = crate::engine::queue::queue();
        for seq in 1..=3 {
            tx.push(event(seq));
        }
        tx.push(Item::Heartbeat(Heartbeat::default()));
        tx.push(event(4));
        assert!(tx.flush());
        drop(tx);
        Batches::new(rx, form)
            .map(|i| i.item.unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn runs_of_events_become_batches_in_order() {
        let items = items(Form::Batched).await;
        let seqs = |i: &Wire| match i {
            Wire::Batch(b) => b.events.iter().map(|e| e.seq).collect(),
            _ => vec![],
        };
        assert_eq!(items.len(), 3);
        assert_eq!(seqs(&items[0]), vec![1, 2, 3]);
        assert!(matches!(items[1], Wire::Heartbeat(_)));
        assert_eq!(seqs(&items[2]), vec![4]);
    }

    #[tokio::test]
    async fn plain_items_go_one_by_one() {
        let plain = items(Form::Plain).await;
        assert_eq!(plain.len(), 5);
        assert!(matches!(&plain[3], Wire::Heartbeat(_)));
        assert!(matches!(&plain[4], Wire::Event(e) if e.seq == 4 && e.session == "s1"));
    }
}
