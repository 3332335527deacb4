//! The follow stream for clients that accept `EventBatch`: whatever is
//! queued for the follower when the stream is polled goes out as few
//! messages as order allows — runs of events as one batch, loss notices
//! and heartbeats on their own. Nothing waits to fill a batch, so a quiet
//! session sees each event as soon as it happens.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use qtap_proto::v1::{follow_item::Item, EventBatch, FollowItem};
use tokio::sync::mpsc;
use tokio_stream::Stream;

/// Most items taken from the queue per message.
const MAX_BATCH: usize = 512;

pub struct Batches {
    rx: mpsc::Receiver<FollowItem>,
    /// Messages made from one take, not sent yet.
    ready: VecDeque<FollowItem>,
    taken: Vec<FollowItem>,
}

impl Batches {
    pub fn new(rx: mpsc::Receiver<FollowItem>) -> Batches {
        Batches {
            rx,
            ready: VecDeque::new(),
            taken: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Groups `taken` into messages, in order.
    fn group(&mut self) {
        let mut events = Vec::new();
        for item in self.taken.drain(..) {
            match item.item {
                Some(Item::Event(event)) => events.push(event),
                other => {
                    if !events.is_empty() {
                        self.ready.push_back(batch(std::mem::take(&mut events)));
                    }
                    self.ready.push_back(FollowItem { item: other });
                }
            }
        }
        if !events.is_empty() {
            self.ready.push_back(batch(events));
        }
    }
}

fn batch(events: Vec<qtap_proto::v1::Event>) -> FollowItem {
    FollowItem {
        item: Some(Item::Batch(EventBatch { events })),
    }
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
    use qtap_proto::v1::{Event, Heartbeat};
    use tokio_stream::StreamExt;

    use super::*;

    fn event(seq: u64) -> FollowItem {
        FollowItem {
            item: Some(Item::Event(Event {
                seq,
                ..Event::default()
            })),
        }
    }

    #[tokio::test]
    async fn runs_of_events_become_batches_in_order() {
        let (tx, rx) = mpsc::channel(16);
        for seq in 1..=3 {
            tx.send(event(seq)).await.unwrap();
        }
        tx.send(FollowItem {
            item: Some(Item::Heartbeat(Heartbeat::default())),
        })
        .await
        .unwrap();
        tx.send(event(4)).await.unwrap();
        drop(tx);
        let items: Vec<Item> = Batches::new(rx).map(|i| i.item.unwrap()).collect().await;
        let seqs = |i: &Item| match i {
            Item::Batch(b) => b.events.iter().map(|e| e.seq).collect(),
            _ => vec![],
        };
        assert_eq!(items.len(), 3);
        assert_eq!(seqs(&items[0]), vec![1, 2, 3]);
        assert!(matches!(items[1], Item::Heartbeat(_)));
        assert_eq!(seqs(&items[2]), vec![4]);
    }
}
