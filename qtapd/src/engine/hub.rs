//! The sessions and their followers. Owns, per session, the filter, the
//! kernel slot (bit of every session mask), the counters and the follower
//! queues. Delivery never waits: each follower has a queue bounded in
//! items and bytes; a full queue counts the event as lost for that
//! follower, and the count is sent as a `lost` item as soon as the queue
//! has room again, before the next event, so the stream always says how
//! much it is missing. What is offered is staged and handed over at the
//! next [`Hub::flush`] (`queue`). A session encodes the compact form once
//! for all the followers that asked for it (`compact`): each of those is
//! offered the session's batch whole, and is told of its loss the same way.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use qtap_common::MAX_SESSIONS;
use qtap_proto::v1::{
    CompactBatch, Heartbeat, LossStage, Lost, Session as SessionInfo, SessionEnd,
};

use super::compact::{Encoder, MAX_RECORDS};
pub use super::item::{Delivered, Item, Shared};
use super::queue::{self, Receiver, Sender};
use crate::events::monotonic_ns;
use crate::{
    events::Event,
    filter::{Filter, Module},
};

/// Who started a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
}

/// How a session was started.
#[derive(Clone, Debug)]
pub struct Spec {
    pub filter: Filter,
    pub name: String,
    pub owner: Owner,
    pub idle_timeout: Duration,
    /// Ends when its last follower leaves (a `follow --filter` session).
    pub ephemeral: bool,
    /// Payload bytes kept with each data event.
    pub capture_bytes: u32,
    /// Where the session's events are exported as OTLP logs (`otlp`).
    pub otlp_endpoint: Option<String>,
}

/// A follower's queue: its length in events (and control items), the
/// bytes of events it may hold, who follows, and whether it takes the
/// session's compact batches instead of events. A bare length is a queue
/// of events without a byte budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    pub len: usize,
    pub bytes: u64,
    pub uid: u32,
    pub compact: bool,
}

impl From<usize> for Queue {
    fn from(len: usize) -> Queue {
        Queue {
            len,
            bytes: u64::MAX,
            uid: 0,
            compact: false,
        }
    }
}

/// One item in a follower's queue: its estimated bytes, and how much of
/// the queue's length it takes (its events; one for a control item).
#[derive(Clone, Copy, Debug)]
struct Queued {
    bytes: u64,
    slots: u64,
}

struct Follower {
    tx: Sender,
    /// Most events (and control items) its queue holds.
    len: u64,
    /// Who follows (quotas count per uid).
    uid: u32,
    /// Takes the session's compact batches ([`Item::Compact`]).
    compact: bool,
    /// Bytes of events this follower's queue may hold.
    budget: u64,
    /// Each item in the queue (staged or sent, not yet taken), oldest
    /// first.
    queued: VecDeque<Queued>,
    /// Their bytes and slots.
    bytes: u64,
    slots: u64,
    /// The definitions of the compact batches this follower missed, sent
    /// before the next batch it gets so that its ids stay right.
    missed: Option<CompactBatch>,
    /// Does not keep an ephemeral session alive (an OTLP exporter: the
    /// session ends with its last stream, not with the exporter).
    passive: bool,
    /// Events dropped since the last `lost` item this follower got.
    unreported: u64,
    /// Records withheld from this follower's restricted session since the
    /// last `lost` item of that stage ([`Session::withhold`]).
    unverified: u64,
}

/// Outcome of offering one item to a follower.
enum Offer {
    Sent,
    Full,
    Gone,
}

impl Follower {
    /// The losses not yet reported to this follower, by stage.
    fn unreported(&self) -> [(LossStage, u64); 2] {
        [
            (LossStage::DaemonQueue, self.unreported),
            (LossStage::AccessUnverified, self.unverified),
        ]
    }

    /// The losses at `stage` were reported.
    fn reported(&mut self, stage: LossStage) {
        if stage == LossStage::DaemonQueue {
            self.unreported = 0;
        } else {
            self.unverified = 0;
        }
    }

    /// Sends a notice for each stage with unreported losses while the
    /// queue has room; false when the follower is gone.
    fn report_losses(&mut self, memory: &mut Memory) -> bool {
        for (stage, count) in self.unreported() {
            if count == 0 {
                continue;
            }
            let notice = Item::Lost(Lost {
                stage: stage.into(),
                count,
            });
            match self.send(notice, CONTROL_BYTES, memory) {
                Offer::Sent => self.reported(stage),
                Offer::Full => {}
                Offer::Gone => return false,
            }
        }
        true
    }

    /// The stream ends: hands over what is staged, the losses not
    /// reported yet and why it ends, past the queue's bound (a few small
    /// items), so that the follower's count of lost events is complete
    /// and the reason is its last item.
    fn finish(&mut self, end: &SessionEnd) {
        for (stage, count) in self.unreported() {
            if count > 0 {
                self.tx.push(Item::Lost(Lost {
                    stage: stage.into(),
                    count,
                }));
                self.reported(stage);
            }
        }
        self.tx.push(Item::End(end.clone()));
        self.tx.flush();
    }

    /// Forgets the items the receiver took since last time.
    fn settle(&mut self, memory: &mut Memory) {
        for _ in 0..self.tx.newly_taken() {
            let taken = self
                .queued
                .pop_front()
                .unwrap_or(Queued { bytes: 0, slots: 0 });
            self.bytes -= taken.bytes;
            self.slots -= taken.slots;
            memory.used -= taken.bytes;
        }
    }

    fn send(&mut self, item: Item, size: u64, memory: &mut Memory) -> Offer {
        if self.tx.is_closed() {
            return Offer::Gone;
        }
        let slots = item_slots(&item);
        // A batch goes whole or is lost whole.
        if self.slots + slots > self.len {
            return Offer::Full;
        }
        self.push(item, size, slots, memory);
        Offer::Sent
    }

    /// Stages `item` whatever the queue holds.
    fn push(&mut self, item: Item, bytes: u64, slots: u64, memory: &mut Memory) {
        self.tx.push(item);
        self.queued.push_back(Queued { bytes, slots });
        self.bytes += bytes;
        self.slots += slots;
        memory.used += bytes;
    }

    /// Offers one item: events only while this follower's queue and all
    /// queues together stay within their byte budgets.
    fn offer(&mut self, item: Item, memory: &mut Memory) -> Offer {
        self.settle(memory);
        let size = item_bytes(&item);
        // Events that do not fit wait with their loss notice, so that
        // notices do not fill the queue one by one meanwhile.
        if matches!(item, Item::Event(_) | Item::Compact(_))
            && (self.bytes + size > self.budget || memory.used + size > memory.max)
        {
            return if self.tx.is_closed() {
                Offer::Gone
            } else {
                Offer::Full
            };
        }
        if (self.unreported > 0 || self.unverified > 0) && !self.report_losses(memory) {
            return Offer::Gone;
        }
        if matches!(item, Item::Compact(_)) {
            if let Some(missed) = self.missed.take() {
                // Bounded: at most one table's definitions (`compact`).
                let missed = Shared {
                    batch: Arc::new(missed),
                    events: 0,
                };
                let bytes = missed.bytes();
                self.push(Item::Compact(missed), bytes, 1, memory);
            }
        }
        self.send(item, size, memory)
    }

    /// This follower misses `batch`: keeps its definitions for the next
    /// batch it gets.
    fn miss(&mut self, batch: &CompactBatch) {
        if !batch.reset && batch.definitions.is_empty() {
            return;
        }
        let missed = self.missed.get_or_insert_with(|| CompactBatch {
            session: batch.session.clone(),
            ..CompactBatch::default()
        });
        if batch.reset {
            missed.definitions.clear();
            missed.reset = true;
        }
        missed.definitions.extend_from_slice(&batch.definitions);
    }

    /// Returns what this follower's queue holds to the shared budget.
    fn release(&mut self, memory: &mut Memory) {
        memory.used -= self.bytes;
        self.bytes = 0;
        self.slots = 0;
        self.queued.clear();
    }
}

pub struct Session {
    pub id: String,
    pub slot: usize,
    pub spec: Spec,
    pub created: SystemTime,
    /// `CLOCK_MONOTONIC` when the session was created, before its filter
    /// reached the kernel: a record stamped earlier was made for the
    /// slot's previous owner and is never delivered here.
    pub since_ns: u64,
    pub delivered: u64,
    pub lost: u64,
    /// `id`, shared by the events delivered to it.
    label: Arc<str>,
    seq: u64,
    followers: Vec<Follower>,
    /// The compact batch its compact followers share, being made.
    encoder: Encoder,
    /// When that batch is sealed.
    seal_at: SealAt,
    idle_since: Option<Instant>,
}

impl Session {
    /// The wire view of this session.
    #[must_use]
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            filter: self.spec.filter.to_string(),
            owner_uid: self.spec.owner.uid,
            created_unix_nanos: unix_nanos(self.created),
            events_delivered: self.delivered,
            events_lost: self.lost,
            followers: self.followers.len() as u32,
            idle_timeout_secs: self.spec.idle_timeout.as_secs() as u32,
            capture_bytes: self.spec.capture_bytes,
        }
    }

    /// Hands one event to every follower (to the compact ones, in the
    /// batch being made); never waits.
    fn deliver(&mut self, event: Arc<Event>, memory: &mut Memory) {
        self.seq += 1;
        let delivered = Delivered {
            event,
            session: Arc::clone(&self.label),
            seq: self.seq,
            capture: self.spec.capture_bytes,
        };
        self.offer_events(false, 1, || Item::Event(delivered.clone()), |_| {}, memory);
        if self.followers.iter().any(|f| f.compact) {
            self.encoder.push(&delivered);
            let (records, payloads, definitions) = self.encoder.sizes();
            if self.encoder.len() >= self.seal_at.events
                || batch_bytes(records, payloads, definitions) >= self.seal_at.bytes
            {
                self.seal(memory);
            }
        }
        self.note_idle();
    }

    /// Offers the batch being made to every compact follower; a follower
    /// whose queue is full loses its events (and is told before its next
    /// item) but not its definitions.
    fn seal(&mut self, memory: &mut Memory) {
        if self.encoder.is_empty() {
            return;
        }
        let events = self.encoder.len() as u64;
        let batch = Arc::new(self.encoder.take());
        let shared = || {
            Item::Compact(Shared {
                batch: Arc::clone(&batch),
                events,
            })
        };
        if self.offer_events(true, events, shared, |f| f.miss(&batch), memory) {
            self.compact_followers_changed();
        }
    }

    /// Offers the `events` events of `item()` to each follower that takes
    /// that form (`compact` or not): each counts as delivered, or as lost
    /// when its queue is full (and `missed` is told), and a follower that
    /// left is dropped. Whether one left.
    fn offer_events(
        &mut self,
        compact: bool,
        events: u64,
        item: impl Fn() -> Item,
        mut missed: impl FnMut(&mut Follower),
        memory: &mut Memory,
    ) -> bool {
        let (mut delivered, mut lost) = (0, 0);
        let before = self.followers.len();
        self.followers.retain_mut(|f| {
            if f.compact != compact {
                return true;
            }
            match f.offer(item(), memory) {
                Offer::Sent => {
                    delivered += events;
                    true
                }
                Offer::Full => {
                    f.unreported += events;
                    missed(f);
                    lost += events;
                    true
                }
                Offer::Gone => {
                    f.release(memory);
                    false
                }
            }
        });
        self.delivered += delivered;
        self.lost += lost;
        self.followers.len() != before
    }

    /// Compact followers came or went: the seal point follows their
    /// queues, and with none left the encoder lets go of what its tables
    /// name (one that joins starts them over anyway).
    fn compact_followers_changed(&mut self) {
        self.seal_at = SealAt::for_followers(&self.followers);
        if self.encoder.is_empty() && !self.followers.iter().any(|f| f.compact) {
            self.encoder.start_over();
        }
    }

    /// Offers a control item (loss notice, heartbeat) to every follower,
    /// after the events before it, dropping those that left; a full
    /// queue just misses it.
    fn offer_all(&mut self, item: &Item, memory: &mut Memory) {
        self.seal(memory);
        let before = self.followers.len();
        self.followers
            .retain_mut(|f| match f.offer(item.clone(), memory) {
                Offer::Gone => {
                    f.release(memory);
                    false
                }
                Offer::Sent | Offer::Full => true,
            });
        if self.followers.len() != before {
            self.compact_followers_changed();
        }
        self.note_idle();
    }

    /// `records` meant for this restricted session were withheld: their
    /// process was gone before its owner's right to see it was checked.
    /// Each follower hears of it before its next item.
    fn withhold(&mut self, records: u64) {
        for follower in &mut self.followers {
            follower.unverified += records;
        }
    }

    /// Number of followers (streams and exporters).
    #[must_use]
    pub fn followers(&self) -> usize {
        self.followers.len()
    }

    /// Followers of `uid`.
    fn followers_of(&self, uid: u32) -> usize {
        self.followers.iter().filter(|f| f.uid == uid).count()
    }

    /// Hands each follower what was staged for it; drops those that left.
    fn flush(&mut self, memory: &mut Memory) {
        self.seal(memory);
        let before = self.followers.len();
        self.followers.retain_mut(|f| {
            if f.tx.flush() {
                true
            } else {
                f.release(memory);
                false
            }
        });
        if self.followers.len() != before {
            self.compact_followers_changed();
            self.note_idle();
        }
    }

    fn note_idle(&mut self) {
        if self.followers.iter().all(|f| f.passive) {
            self.idle_since.get_or_insert_with(Instant::now);
        } else {
            self.idle_since = None;
        }
    }
}

/// What the follower queues hold, in estimated bytes, and the most they
/// may hold together.
#[derive(Debug)]
struct Memory {
    used: u64,
    max: u64,
}

/// The estimated bytes a control item (loss notice, heartbeat) holds.
const CONTROL_BYTES: u64 = 64;

/// The estimated bytes an item holds in a queue: its strings and payload
/// and a fixed part for the rest.
fn item_bytes(item: &Item) -> u64 {
    match item {
        Item::Event(d) => d.event.weight(),
        Item::Compact(shared) => shared.bytes(),
        _ => CONTROL_BYTES,
    }
}

/// The estimated bytes of a compact batch of `records` and `payloads`
/// bytes: those, and each definition as a control item.
fn batch_bytes(records: usize, payloads: usize, definitions: usize) -> u64 {
    (records + payloads) as u64 + CONTROL_BYTES * definitions as u64
}

impl Shared {
    fn bytes(&self) -> u64 {
        let b = &self.batch;
        batch_bytes(b.records.len(), b.payloads.len(), b.definitions.len())
    }
}

/// When a session's compact batch is sealed: at [`MAX_RECORDS`], and at
/// half of the smallest compact follower's queue, in events and in bytes,
/// so that a follower that has read what it had (a loss notice and missed
/// definitions may wait) always has room for the next batch.
#[derive(Clone, Copy, Debug)]
struct SealAt {
    events: usize,
    bytes: u64,
}

impl Default for SealAt {
    fn default() -> Self {
        SealAt {
            events: MAX_RECORDS,
            bytes: u64::MAX,
        }
    }
}

impl SealAt {
    /// As the compact followers among `followers` need it.
    fn for_followers(followers: &[Follower]) -> SealAt {
        followers
            .iter()
            .filter(|f| f.compact)
            .fold(SealAt::default(), |at, f| SealAt {
                events: at.events.min((f.len / 2).max(1) as usize),
                bytes: at.bytes.min(f.budget / 2),
            })
    }
}

/// How much of a queue's length an item takes: its events, or one.
fn item_slots(item: &Item) -> u64 {
    match item {
        Item::Compact(shared) => shared.events.max(1),
        _ => 1,
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("all {MAX_SESSIONS} session slots are in use; stop a session first")]
    Full,
    #[error("no session `{0}`")]
    NotFound(String),
}

/// All sessions, by id.
pub struct Hub {
    sessions: BTreeMap<String, Session>,
    next_id: u64,
    /// Events lost in the queues of sessions that ended.
    ended_losses: u64,
    memory: Memory,
    /// `since_ns` of the session created last: a record stamped after it
    /// is older than no session (the fast path of `started_by`).
    newest_since: u64,
    /// Sessions of callers other than root, kept as sessions come and go
    /// (asked for every record).
    restricted: u64,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new(u64::MAX)
    }
}

impl Hub {
    /// A hub whose follower queues hold at most `max_queued_bytes` of
    /// events together (`--max-queued-bytes`).
    #[must_use]
    pub fn new(max_queued_bytes: u64) -> Hub {
        Hub {
            sessions: BTreeMap::new(),
            next_id: 0,
            ended_losses: 0,
            memory: Memory {
                used: 0,
                max: max_queued_bytes,
            },
            newest_since: 0,
            restricted: 0,
        }
    }

    /// Events lost in full follower queues, counted per follower, in all
    /// sessions so far.
    #[must_use]
    pub fn queue_losses(&self) -> u64 {
        self.ended_losses + self.sessions.values().map(|s| s.lost).sum::<u64>()
    }

    /// Estimated bytes of events queued for all followers.
    #[must_use]
    pub fn queued_bytes(&self) -> u64 {
        self.memory.used
    }

    /// Followers of `uid` in all sessions.
    #[must_use]
    pub fn followers_of(&self, uid: u32) -> usize {
        self.sessions.values().map(|s| s.followers_of(uid)).sum()
    }

    /// Registers a session in the lowest free slot.
    pub fn create(&mut self, spec: Spec) -> Result<&Session, HubError> {
        let slot = (0..MAX_SESSIONS)
            .find(|s| !self.sessions.values().any(|x| x.slot == *s))
            .ok_or(HubError::Full)?;
        self.next_id += 1;
        let id = format!("s{}", self.next_id);
        self.newest_since = monotonic_ns();
        if spec.owner.uid != 0 {
            self.restricted |= 1 << slot;
        }
        let session = Session {
            label: id.as_str().into(),
            id: id.clone(),
            slot,
            spec,
            created: SystemTime::now(),
            since_ns: self.newest_since,
            delivered: 0,
            lost: 0,
            seq: 0,
            followers: Vec::new(),
            encoder: Encoder::new(),
            seal_at: SealAt::default(),
            idle_since: Some(Instant::now()),
        };
        Ok(self.sessions.entry(id).or_insert(session))
    }

    /// Removes a session; its followers' streams end after what is
    /// queued for them, the losses they were not told of yet, and `end`.
    pub fn remove(&mut self, id: &str, end: &SessionEnd) -> Result<Session, HubError> {
        let mut session = self
            .sessions
            .remove(id)
            .ok_or_else(|| HubError::NotFound(id.to_owned()))?;
        self.restricted &= !(1 << session.slot);
        session.seal(&mut self.memory);
        self.ended_losses += session.lost;
        for follower in &mut session.followers {
            follower.finish(end);
            follower.release(&mut self.memory);
        }
        Ok(session)
    }

    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The filters in force, by slot, for the kernel compiler.
    pub fn filters(&self) -> impl Iterator<Item = (usize, &Filter)> {
        self.sessions.values().map(|s| (s.slot, &s.spec.filter))
    }

    /// The session in `slot`.
    #[must_use]
    pub fn by_slot(&self, slot: usize) -> Option<&Session> {
        self.sessions.values().find(|s| s.slot == slot)
    }

    /// Adds a follower with `queue`.
    pub fn follow(&mut self, id: &str, queue: impl Into<Queue>) -> Result<Receiver, HubError> {
        self.attach(id, queue.into(), false)
    }

    /// An exporter's queue: like [`Hub::follow`], but in an ephemeral
    /// session (`follow --filter`) it keeps nothing alive.
    pub fn follow_exporter(
        &mut self,
        id: &str,
        queue: impl Into<Queue>,
    ) -> Result<Receiver, HubError> {
        let ephemeral = self.sessions.get(id).is_some_and(|s| s.spec.ephemeral);
        self.attach(id, queue.into(), ephemeral)
    }

    fn attach(&mut self, id: &str, queue: Queue, passive: bool) -> Result<Receiver, HubError> {
        let session = self
            .sessions
            .get_mut(id)
            .ok_or_else(|| HubError::NotFound(id.to_owned()))?;
        if queue.compact {
            // The ids the encoder gave are news to this follower: the
            // others get what is being made, then all start over.
            session.seal(&mut self.memory);
            session.encoder.start_over();
        }
        let (tx, rx) = queue::queue();
        session.followers.push(Follower {
            tx,
            len: queue.len.max(1) as u64,
            uid: queue.uid,
            compact: queue.compact,
            budget: queue.bytes,
            queued: VecDeque::new(),
            bytes: 0,
            slots: 0,
            missed: None,
            passive,
            unreported: 0,
            unverified: 0,
        });
        session.compact_followers_changed();
        session.note_idle();
        Ok(rx)
    }

    /// The most payload bytes any session asked for.
    #[must_use]
    pub fn capture_bytes(&self) -> u32 {
        self.sessions
            .values()
            .map(|s| s.spec.capture_bytes)
            .max()
            .unwrap_or(0)
    }

    /// `mask` without the sessions created after kernel time `ts_ns`: a
    /// record stamped then was made for a slot's earlier owner. (Bits of
    /// no session may stay; delivery passes them by.)
    #[must_use]
    pub fn started_by(&self, mask: u64, ts_ns: u64) -> u64 {
        // Almost every record: stamped after the newest session began.
        if ts_ns >= self.newest_since {
            return mask;
        }
        self.sessions
            .values()
            .filter(|s| mask & (1 << s.slot) != 0 && s.since_ns <= ts_ns)
            .fold(0, |acc, s| acc | (1 << s.slot))
    }

    /// Sessions of callers other than root (`Config::restricted`).
    #[must_use]
    pub fn restricted(&self) -> u64 {
        self.restricted
    }

    /// Sessions started by `uid`.
    #[must_use]
    pub fn owned_by(&self, uid: u32) -> u64 {
        self.mask_of(|s| s.spec.owner.uid == uid)
    }

    /// Every session's bit.
    #[must_use]
    pub fn mask_all(&self) -> u64 {
        self.mask_of(|_| true)
    }

    fn mask_of(&self, pick: impl Fn(&Session) -> bool) -> u64 {
        self.sessions
            .values()
            .filter(|s| pick(s))
            .fold(0, |acc, s| acc | (1 << s.slot))
    }

    /// Whether a session in `mask` asked for `module`.
    #[must_use]
    pub fn wanted(&self, mask: u64, module: Module) -> bool {
        self.sessions
            .values()
            .any(|s| mask & (1 << s.slot) != 0 && s.spec.filter.wants(module))
    }

    /// Whether a session in `mask` has a follower: when none has, an event
    /// for `mask` need not be made at all.
    #[must_use]
    pub fn listened(&self, mask: u64) -> bool {
        mask != 0
            && self
                .sessions
                .values()
                .any(|s| mask & (1 << s.slot) != 0 && !s.followers.is_empty())
    }

    /// Hands `event` to the followed sessions of `mask` that want it, one
    /// shared copy for all, staged until the next [`Hub::flush`].
    /// Sessions without a follower get nothing (their sequence numbers
    /// count what was handed to followers).
    pub fn deliver(
        &mut self,
        mask: u64,
        event: &Arc<Event>,
        wants: impl Fn(&Session, &Event) -> bool,
    ) {
        for session in self.sessions.values_mut() {
            if mask & (1 << session.slot) == 0
                || session.followers.is_empty()
                || !wants(session, event)
            {
                continue;
            }
            session.deliver(Arc::clone(event), &mut self.memory);
        }
    }

    /// Hands every follower what was offered to it since the last flush:
    /// after a batch of ring records, and by every method that offers
    /// control items.
    pub fn flush(&mut self) {
        for session in self.sessions.values_mut() {
            session.flush(&mut self.memory);
        }
    }

    /// `records` meant for the sessions of `mask` were withheld
    /// ([`Session::withhold`]).
    pub fn withhold(&mut self, mask: u64, records: u64) {
        for session in self.sessions.values_mut() {
            if mask & (1 << session.slot) != 0 {
                session.withhold(records);
            }
        }
    }

    /// Tells every follower of every session that `count` records were
    /// lost at `stage` (kernel ring losses cannot be attributed).
    pub fn broadcast_lost(&mut self, stage: LossStage, count: u64) {
        for session in self.sessions.values_mut() {
            let item = Item::Lost(Lost {
                stage: stage.into(),
                count,
            });
            session.offer_all(&item, &mut self.memory);
        }
        self.flush();
    }

    /// Sends a heartbeat to every follower; drops followers that left.
    pub fn heartbeat(&mut self) {
        let now = unix_nanos(SystemTime::now());
        for session in self.sessions.values_mut() {
            let item = Item::Heartbeat(Heartbeat {
                unix_nanos: now,
                delivered: session.delivered,
            });
            session.offer_all(&item, &mut self.memory);
        }
        self.flush();
    }

    /// Removes and returns sessions that have had no follower for their
    /// idle timeout (at once for ephemeral sessions).
    pub fn expire(&mut self, now: Instant) -> Vec<Session> {
        for session in self.sessions.values_mut() {
            let memory = &mut self.memory;
            session.followers.retain_mut(|f| {
                if f.tx.is_closed() {
                    f.release(memory);
                    false
                } else {
                    // What the receiver took goes back to the budget even
                    // while no event comes.
                    f.settle(memory);
                    true
                }
            });
            session.note_idle();
        }
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| {
                s.idle_since.is_some_and(|since| {
                    let limit = if s.spec.ephemeral {
                        Duration::ZERO
                    } else {
                        s.spec.idle_timeout
                    };
                    now.duration_since(since) >= limit
                })
            })
            .map(|s| s.id.clone())
            .collect();
        let end = SessionEnd {
            reason: qtap_proto::v1::EndReason::Idle.into(),
            detail: "no follower for the session's idle timeout".into(),
        };
        expired
            .into_iter()
            .filter_map(|id| self.remove(&id, &end).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped() -> SessionEnd {
        SessionEnd {
            reason: qtap_proto::v1::EndReason::Stopped.into(),
            detail: "stopped by uid 0".into(),
        }
    }

    fn spec(filter: &str) -> Spec {
        Spec {
            filter: Filter::parse(filter).unwrap(),
            name: String::new(),
            owner: Owner { uid: 0 },
            idle_timeout: Duration::from_mins(10),
            ephemeral: false,
            capture_bytes: 0,
            otlp_endpoint: None,
        }
    }

    fn event(n: u32) -> Event {
        Event {
            msg: "syscall/write".into(),
            pid: n,
            ..Event::default()
        }
    }

    /// What `rx` holds once the hub has flushed.
    fn drain(hub: &mut Hub, rx: &mut Receiver) -> Vec<Item> {
        hub.flush();
        let mut items = Vec::new();
        while let Ok(item) = rx.try_recv() {
            items.push(item);
        }
        items
    }

    #[test]
    fn slots_are_reused_and_limited() {
        let mut hub = Hub::default();
        let ids: Vec<String> = (0..MAX_SESSIONS)
            .map(|_| hub.create(spec("pid:1")).unwrap().id.clone())
            .collect();
        assert!(matches!(hub.create(spec("pid:1")), Err(HubError::Full)));
        let freed = hub.remove(&ids[5], &stopped()).unwrap().slot;
        assert_eq!(hub.create(spec("pid:1")).unwrap().slot, freed);
        assert!(matches!(
            hub.remove("nope", &stopped()),
            Err(HubError::NotFound(_))
        ));
    }

    #[test]
    fn fan_out_by_mask_with_per_session_seq() {
        let mut hub = Hub::default();
        let a = hub.create(spec("pid:1")).unwrap().id.clone();
        let b = hub.create(spec("pid:2")).unwrap().id.clone();
        let mut ra = hub.follow(&a, 16).unwrap();
        let mut rb = hub.follow(&b, 16).unwrap();
        let (sa, sb) = (hub.get(&a).unwrap().slot, hub.get(&b).unwrap().slot);
        hub.deliver(1 << sa | 1 << sb, &Arc::new(event(1)), |_, _| true);
        hub.deliver(1 << sb, &Arc::new(event(2)), |_, _| true);
        let got_a = drain(&mut hub, &mut ra);
        let got_b = drain(&mut hub, &mut rb);
        assert_eq!(got_a.len(), 1);
        assert_eq!(got_b.len(), 2);
        let Item::Event(e) = &got_b[1] else { panic!() };
        assert_eq!((&*e.session, e.seq, e.event.pid), (b.as_str(), 2, 2));
        let Item::Event(e) = &got_a[0] else { panic!() };
        assert_eq!((&*e.session, e.seq), (a.as_str(), 1));
    }

    #[test]
    fn only_sessions_with_a_follower_are_listened_to() {
        let mut hub = Hub::default();
        let a = hub.create(spec("pid:1")).unwrap().id.clone();
        let b = hub.create(spec("pid:2")).unwrap().id.clone();
        let (sa, sb) = (hub.get(&a).unwrap().slot, hub.get(&b).unwrap().slot);
        assert!(!hub.listened(1 << sa | 1 << sb), "no follower yet");
        let mut rb = hub.follow(&b, 16).unwrap();
        assert!(!hub.listened(1 << sa));
        assert!(hub.listened(1 << sa | 1 << sb));
        assert!(!hub.listened(0));
        hub.deliver(1 << sa | 1 << sb, &Arc::new(event(1)), |_, _| true);
        let got = drain(&mut hub, &mut rb);
        assert!(matches!(&got[..], [Item::Event(e)] if e.seq == 1 && *e.session == *b));
        assert_eq!(hub.get(&a).unwrap().delivered, 0);
    }

    #[test]
    fn each_session_gets_the_payload_it_asked_for() {
        let mut hub = Hub::default();
        let a = hub
            .create(Spec {
                capture_bytes: 4,
                ..spec("pid:1")
            })
            .unwrap()
            .id
            .clone();
        let b = hub.create(spec("pid:1")).unwrap().id.clone();
        assert_eq!(hub.capture_bytes(), 4);
        let mut ra = hub.follow(&a, 16).unwrap();
        let mut rb = hub.follow(&b, 16).unwrap();
        let e = Event {
            payload: b"GET /index.html".to_vec(),
            ..event(1)
        };
        hub.deliver(0b11, &Arc::new(e), |_, _| true);
        let payload = |items: Vec<Item>| match &items[..] {
            [Item::Event(e)] => e.payload().to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(payload(drain(&mut hub, &mut ra)), b"GET ");
        assert_eq!(payload(drain(&mut hub, &mut rb)), b"");
    }

    #[test]
    fn slow_follower_loses_counts_and_is_told_others_unaffected() {
        let mut hub = Hub::default();
        let id = hub.create(spec("pid:1")).unwrap().id.clone();
        let slot = hub.get(&id).unwrap().slot;
        let mut lagging = hub.follow(&id, 4).unwrap();
        let mut fast = hub.follow(&id, 1024).unwrap();
        for n in 0..10 {
            hub.deliver(1 << slot, &Arc::new(event(n)), |_, _| true);
        }
        // The fast follower got everything; the slow one 4, then lost 6.
        assert_eq!(drain(&mut hub, &mut fast).len(), 10);
        assert_eq!(
            drain(&mut hub, &mut lagging).len(),
            4,
            "a queue of 4 holds 4 events"
        );
        let s = hub.get(&id).unwrap();
        assert_eq!((s.delivered, s.lost), (14, 6));
        assert_eq!(hub.queue_losses(), 6);
        // With room again, the next delivery is preceded by the loss count.
        hub.deliver(1 << slot, &Arc::new(event(99)), |_, _| true);
        let items = drain(&mut hub, &mut lagging);
        assert!(
            matches!(&items[0], Item::Lost(l) if l.count == 6 && l.stage == LossStage::DaemonQueue as i32)
        );
        assert!(matches!(&items[1], Item::Event(e) if e.event.pid == 99 && e.seq == 11));
        // What the lagging follower received plus what it was told it lost
        // accounts for every event offered to it.
        let received = 4 + items.iter().filter(|i| matches!(i, Item::Event(_))).count() as u64;
        let told_lost: u64 = items
            .iter()
            .map(|i| if let Item::Lost(l) = i { l.count } else { 0 })
            .sum();
        assert_eq!(received + told_lost, 11);
    }

    /// Losses after the last event a follower could take are reported when
    /// the session stops, even with its queue still full.
    #[tokio::test]
    async fn losses_at_the_end_are_reported_when_the_session_stops() {
        let mut hub = Hub::default();
        let id = hub.create(spec("pid:1")).unwrap().id.clone();
        let slot = hub.get(&id).unwrap().slot;
        let mut rx = hub.follow(&id, 4).unwrap();
        for n in 0..10 {
            hub.deliver(1 << slot, &Arc::new(event(n)), |_, _| true);
        }
        let session = hub.remove(&id, &stopped()).unwrap();
        drop(session);
        let mut events = 0;
        let mut lost = 0;
        let mut end = None;
        while let Some(item) = rx.recv().await {
            match item {
                Item::Event(_) => events += 1,
                Item::Lost(l) => lost += l.count,
                Item::Heartbeat(_) => {}
                Item::End(why) => end = Some(why),
                Item::Compact(_) => unreachable!("a plain follower"),
            }
        }
        assert_eq!((events, lost), (4, 6));
        assert_eq!(end, Some(stopped()), "the stream ends saying why");
    }

    #[test]
    fn idle_sessions_expire_and_followers_keep_them() {
        let mut hub = Hub::default();
        let mut short = spec("pid:1");
        short.idle_timeout = Duration::from_millis(10);
        let idle = hub.create(short.clone()).unwrap().id.clone();
        let kept = hub.create(short).unwrap().id.clone();
        let rx = hub.follow(&kept, 4).unwrap();
        let later = Instant::now() + Duration::from_millis(20);
        let gone: Vec<String> = hub.expire(later).into_iter().map(|s| s.id).collect();
        assert_eq!(gone, vec![idle]);
        drop(rx);
        let gone: Vec<String> = hub
            .expire(Instant::now() + Duration::from_secs(1))
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(gone, vec![kept]);
    }

    /// An exporter keeps a started session alive, but not an ephemeral
    /// one past its last stream.
    #[test]
    fn exporters_keep_only_started_sessions_alive() {
        let mut hub = Hub::default();
        let started = hub.create(spec("pid:1")).unwrap().id.clone();
        let _kept = hub.follow_exporter(&started, 4).unwrap();
        let mut s = spec("pid:1");
        s.ephemeral = true;
        let ephemeral = hub.create(s).unwrap().id.clone();
        let _exporter = hub.follow_exporter(&ephemeral, 4).unwrap();
        let stream = hub.follow(&ephemeral, 4).unwrap();
        assert!(hub.expire(Instant::now()).is_empty());
        drop(stream);
        let gone: Vec<String> = hub
            .expire(Instant::now() + Duration::from_hours(1))
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(gone, vec![ephemeral]);
    }

    #[test]
    fn ephemeral_session_ends_with_its_follower() {
        let mut hub = Hub::default();
        let mut s = spec("pid:1");
        s.ephemeral = true;
        let id = hub.create(s).unwrap().id.clone();
        let rx = hub.follow(&id, 4).unwrap();
        assert!(hub.expire(Instant::now()).is_empty());
        drop(rx);
        assert_eq!(hub.expire(Instant::now()).len(), 1);
    }

    /// Compact followers of a session share each batch, made once; one
    /// that joins later starts from a batch that resets the ids, and its
    /// events decode like everyone else's.
    #[test]
    fn compact_followers_share_one_batch() {
        let mut hub = Hub::default();
        let id = hub.create(spec("pid:1")).unwrap().id.clone();
        let slot = hub.get(&id).unwrap().slot;
        let compact = Queue {
            compact: true,
            ..Queue::from(64)
        };
        let (mut a, mut b) = (
            hub.follow(&id, compact).unwrap(),
            hub.follow(&id, compact).unwrap(),
        );
        let mut plain = hub.follow(&id, 64).unwrap();
        for n in 0..3 {
            hub.deliver(1 << slot, &Arc::new(event(n)), |_, _| true);
        }
        let batch = |items: Vec<Item>| match &items[..] {
            [Item::Compact(shared)] => Arc::clone(&shared.batch),
            other => panic!("one batch, not {other:?}"),
        };
        let (first_a, first_b) = (
            batch(drain(&mut hub, &mut a)),
            batch(drain(&mut hub, &mut b)),
        );
        assert!(Arc::ptr_eq(&first_a, &first_b), "one copy for both");
        assert_eq!(drain(&mut hub, &mut plain).len(), 3, "one item per event");

        let mut late = hub.follow(&id, compact).unwrap();
        hub.deliver(1 << slot, &Arc::new(event(7)), |_, _| true);
        let second = batch(drain(&mut hub, &mut late));
        assert!(second.reset, "the ids start over for the newcomer");
        let mut decoder = qtap_proto::compact::Decoder::new();
        let events = decoder.events(&second).unwrap();
        assert_eq!((events[0].pid, events[0].seq), (7, 4));
        assert!(Arc::ptr_eq(&second, &batch(drain(&mut hub, &mut a))));
    }

    /// A compact follower whose queue is shorter than a full batch still
    /// gets events when bursts outrun it: batches are sealed at half its
    /// queue, so each burst puts whole batches in it and the rest is
    /// counted lost (a batch of the whole burst would never fit).
    #[test]
    fn a_short_compact_queue_gets_whole_batches_of_each_burst() {
        let mut hub = Hub::default();
        let id = hub.create(spec("pid:1")).unwrap().id.clone();
        let slot = hub.get(&id).unwrap().slot;
        let compact = Queue {
            compact: true,
            ..Queue::from(100)
        };
        let mut rx = hub.follow(&id, compact).unwrap();
        let mut decoder = qtap_proto::compact::Decoder::new();
        let (mut received, mut lost) = (0, 0);
        for _burst in 0..3 {
            for n in 0..200 {
                hub.deliver(1 << slot, &Arc::new(event(n)), |_, _| true);
            }
            let mut this_burst = 0;
            for item in drain(&mut hub, &mut rx) {
                match item {
                    Item::Compact(shared) => {
                        this_burst += decoder.events(&shared.batch).unwrap().len() as u64;
                    }
                    Item::Lost(l) => lost += l.count,
                    other => panic!("{other:?}"),
                }
            }
            // Two batches of 50 fit an empty queue; one, beside the
            // notice of the last burst's loss.
            assert!(this_burst >= 50, "{this_burst} events of a burst");
            received += this_burst;
        }
        drop(hub.remove(&id, &stopped()).unwrap());
        while let Ok(item) = rx.try_recv() {
            if let Item::Lost(l) = item {
                lost += l.count;
            }
        }
        assert_eq!(received + lost, 600);
    }

    /// When its last compact follower leaves, a session's encoder lets go
    /// of what its tables named, and the seal point that follower's short
    /// queue set goes with it.
    #[test]
    fn the_encoder_lets_go_when_its_last_compact_follower_leaves() {
        let mut hub = Hub::default();
        let id = hub.create(spec("pid:1")).unwrap().id.clone();
        let slot = hub.get(&id).unwrap().slot;
        let short = Queue {
            compact: true,
            ..Queue::from(10)
        };
        let compact = hub.follow(&id, short).unwrap();
        let mut plain = hub.follow(&id, 64).unwrap();
        assert_eq!(hub.get(&id).unwrap().seal_at.events, 5);
        let conn = Arc::new(qtap_proto::v1::ConnInfo::default());
        let with_conn = Event {
            conn_info: Some(Arc::clone(&conn)),
            ..event(1)
        };
        hub.deliver(1 << slot, &Arc::new(with_conn), |_, _| true);
        drop(drain(&mut hub, &mut plain));
        assert!(Arc::strong_count(&conn) > 1, "the encoder names it");
        drop(compact);
        hub.flush();
        assert_eq!(Arc::strong_count(&conn), 1, "nothing holds it");
        assert_eq!(hub.get(&id).unwrap().seal_at.events, MAX_RECORDS);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::events::Text;

        #[derive(Clone, Debug)]
        enum Step {
            /// The engine delivers this many events.
            Deliver(u8),
            /// The follower reads this many items.
            Read(u8),
            /// A heartbeat tick.
            Heartbeat,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (1u8..40).prop_map(Step::Deliver),
                (0u8..40).prop_map(Step::Read),
                Just(Step::Heartbeat),
            ]
        }

        /// What a follower counted: events received (each with its
        /// sequence number, in order), and losses reported.
        #[derive(Default)]
        struct Counted {
            seqs: Vec<u64>,
            lost: u64,
            decoder: qtap_proto::compact::Decoder,
        }

        impl Counted {
            /// Compact batches decode with the ids the follower was given.
            fn count(&mut self, item: &Item) {
                match item {
                    Item::Event(d) => self.seqs.push(d.seq),
                    Item::Compact(shared) => {
                        let events = self
                            .decoder
                            .events(&shared.batch)
                            .expect("every id is defined");
                        assert_eq!(events.len() as u64, shared.events);
                        self.seqs.extend(events.iter().map(|e| e.seq));
                    }
                    Item::Lost(l) => self.lost += l.count,
                    Item::Heartbeat(_) | Item::End(_) => {}
                }
            }
        }

        proptest! {
            /// For any follower speed, queue size and form: events received
            /// plus losses reported equal the events offered, once the
            /// session has stopped and the follower has read to the end,
            /// and what it received is in order. Each event has an exe of
            /// its own, so a compact follower that misses a batch still
            /// needs its definitions.
            #[test]
            fn delivered_plus_reported_lost_is_offered(
                queue in 1usize..16,
                compact in any::<bool>(),
                steps in prop::collection::vec(step(), 1..60),
            ) {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let (counted, offered) = runtime.block_on(async {
                    let mut hub = Hub::default();
                    let id = hub.create(spec("pid:1")).unwrap().id.clone();
                    let slot = hub.get(&id).unwrap().slot;
                    let queue = Queue { compact, ..Queue::from(queue) };
                    let mut rx = hub.follow(&id, queue).unwrap();
                    let mut counted = Counted::default();
                    let mut offered = 0u64;
                    for step in steps {
                        match step {
                            Step::Deliver(n) => {
                                for _ in 0..n {
                                    let event = Event {
                                        exe: Text::from(format!("/bin/{offered}")),
                                        ..event(1)
                                    };
                                    hub.deliver(1 << slot, &Arc::new(event), |_, _| true);
                                    offered += 1;
                                }
                            }
                            Step::Read(n) => {
                                hub.flush();
                                for _ in 0..n {
                                    let Ok(item) = rx.try_recv() else { break };
                                    counted.count(&item);
                                }
                            }
                            Step::Heartbeat => hub.heartbeat(),
                        }
                    }
                    drop(hub.remove(&id, &stopped()).unwrap());
                    while let Some(item) = rx.recv().await {
                        counted.count(&item);
                    }
                    (counted, offered)
                });
                prop_assert_eq!(counted.seqs.len() as u64 + counted.lost, offered);
                prop_assert!(counted.seqs.is_sorted_by(|a, b| a < b));
            }
        }
    }

    /// A follower's queue holds at most its byte budget of events, and all
    /// queues together at most the hub's; what does not fit is lost and
    /// counted, and room comes back as the receiver takes items.
    #[test]
    fn queues_hold_at_most_their_byte_budget() {
        let mut hub = Hub::new(10_000);
        let capturing = Spec {
            capture_bytes: 4096,
            ..spec("pid:1")
        };
        let id = hub.create(capturing).unwrap().id.clone();
        let slot = hub.get(&id).unwrap().slot;
        let big = Arc::new(Event {
            payload: vec![0; 700],
            ..event(1)
        });
        let size = big.weight();
        let budget = 3 * size;
        let mut rx = hub
            .follow(
                &id,
                Queue {
                    len: 100,
                    bytes: budget,
                    uid: 1000,
                    compact: false,
                },
            )
            .unwrap();
        for _ in 0..10 {
            hub.deliver(1 << slot, &big, |_, _| true);
        }
        assert_eq!(hub.queued_bytes(), budget);
        assert_eq!(hub.get(&id).unwrap().lost, 7);
        assert_eq!(drain(&mut hub, &mut rx).len(), 3);
        // Taken: the next event fits again, after the loss notice.
        hub.deliver(1 << slot, &big, |_, _| true);
        let items = drain(&mut hub, &mut rx);
        assert!(
            matches!(items[0], Item::Lost(Lost { count: 7, .. })),
            "{items:?}"
        );
        assert!(matches!(items[1], Item::Event(_)));
        // The hub's total: another follower without a budget of its own
        // is stopped by it.
        let mut other = hub.follow(&id, 100).unwrap();
        for _ in 0..20 {
            hub.deliver(1 << slot, &big, |_, _| true);
        }
        assert!(hub.queued_bytes() <= 10_000, "{}", hub.queued_bytes());
        let taken = drain(&mut hub, &mut other).len() as u64;
        assert!(taken * size <= 10_000 && taken >= 5, "{taken}");
        drop((rx, other));
        hub.expire(Instant::now());
        assert_eq!(
            hub.queued_bytes(),
            0,
            "a follower that left gives its bytes back"
        );
    }
}
