//! A follower's queue. The hub stages what it offers a follower and hands
//! it over in one send when it flushes (after each batch of ring records),
//! so an event costs no channel operation of its own: the channel carries
//! runs of items. The hub bounds the queue (its length and byte budgets,
//! `hub`); the receiver reports how many items it took, which is how the
//! hub learns that room was made.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::sync::mpsc::{self, error::TryRecvError};

use super::item::Item;

/// A queue: the hub's end and the follower's.
#[must_use]
pub fn queue() -> (Sender, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let taken = Arc::new(AtomicUsize::new(0));
    (
        Sender {
            tx,
            staged: Vec::new(),
            taken: Arc::clone(&taken),
            settled: 0,
        },
        Receiver {
            rx,
            run: Vec::new().into_iter(),
            taken,
        },
    )
}

#[derive(Debug)]
pub struct Sender {
    tx: mpsc::UnboundedSender<Vec<Item>>,
    /// Items pushed since the last flush.
    staged: Vec<Item>,
    /// Items the receiver has taken, all told.
    taken: Arc<AtomicUsize>,
    /// Of those, the ones [`Sender::newly_taken`] has reported.
    settled: usize,
}

impl Sender {
    /// Adds `item` to the run the next flush sends.
    pub fn push(&mut self, item: Item) {
        self.staged.push(item);
    }

    /// Sends the staged run; false when the receiver is gone.
    pub fn flush(&mut self) -> bool {
        if self.staged.is_empty() {
            return !self.tx.is_closed();
        }
        let next = Vec::with_capacity(self.staged.len());
        self.tx
            .send(std::mem::replace(&mut self.staged, next))
            .is_ok()
    }

    /// Whether the receiver is gone.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Items the receiver took since the last call.
    pub fn newly_taken(&mut self) -> usize {
        let taken = self.taken.load(Ordering::Acquire);
        let newly = taken - self.settled;
        self.settled = taken;
        newly
    }
}

#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<Vec<Item>>,
    /// What is left of the run received last.
    run: std::vec::IntoIter<Item>,
    taken: Arc<AtomicUsize>,
}

impl Receiver {
    fn took(&self, n: usize) {
        self.taken.fetch_add(n, Ordering::Release);
    }

    /// The next item; `None` once the hub's end is gone and every item
    /// was taken.
    pub async fn recv(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.run.next() {
                self.took(1);
                return Some(item);
            }
            self.run = self.rx.recv().await?.into_iter();
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Item, TryRecvError> {
        loop {
            if let Some(item) = self.run.next() {
                self.took(1);
                return Ok(item);
            }
            self.run = self.rx.try_recv()?.into_iter();
        }
    }

    /// Moves up to `limit` queued items to `out`: `Ready(0)` when the
    /// queue ended, `Pending` (with a wakeup registered) when it is empty.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Item>,
        limit: usize,
    ) -> Poll<usize> {
        let mut n = 0;
        let mut ended = false;
        while n < limit {
            if let Some(item) = self.run.next() {
                out.push(item);
                n += 1;
                continue;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(run)) => self.run = run.into_iter(),
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if n > 0 {
            self.took(n);
            Poll::Ready(n)
        } else if ended {
            Poll::Ready(0)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use qtap_proto::v1::Heartbeat;

    use super::*;

    fn beat(n: i64) -> Item {
        Item::Heartbeat(Heartbeat {
            unix_nanos: n,
            delivered: 0,
        })
    }

    fn nanos(item: &Item) -> i64 {
        match item {
            Item::Heartbeat(b) => b.unix_nanos,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn items_arrive_at_the_flush_in_order_and_are_counted_as_taken() {
        let (mut tx, mut rx) = queue();
        tx.push(beat(1));
        tx.push(beat(2));
        assert!(rx.try_recv().is_err(), "nothing before the flush");
        assert!(tx.flush());
        tx.push(beat(3));
        assert!(tx.flush());
        assert_eq!(nanos(&rx.recv().await.unwrap()), 1);
        assert_eq!(tx.newly_taken(), 1);
        let mut out = Vec::new();
        let n = std::future::poll_fn(|cx| rx.poll_recv_many(cx, &mut out, 8)).await;
        assert_eq!(n, 2);
        assert_eq!(out.iter().map(nanos).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(tx.newly_taken(), 2);
        assert_eq!(tx.newly_taken(), 0);
        drop(tx);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_receiver_takes_at_most_its_limit_and_ends_after_the_last_item() {
        let (mut tx, mut rx) = queue();
        for n in 0..5 {
            tx.push(beat(n));
        }
        assert!(tx.flush());
        drop(tx);
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let n = std::future::poll_fn(|cx| rx.poll_recv_many(cx, &mut out, 2)).await;
            if n == 0 {
                break;
            }
            sizes.push(n);
        }
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(
            out.iter().map(nanos).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn a_flush_to_a_dropped_receiver_says_so() {
        let (mut tx, rx) = queue();
        drop(rx);
        assert!(tx.is_closed());
        tx.push(beat(1));
        assert!(!tx.flush());
    }
}
