//! `--write FILE` and `qtapctl trace read FILE`: a follow stream kept as
//! qtapd sent it (compact batches, loss reports, the session's end) and
//! rendered later, or elsewhere, with any `--output` or `--group-by`, as
//! `tcpdump -w` and `-r` do. Writing decodes no record into an event, so
//! a follower that writes keeps up with far more than one that renders.
//!
//! The file: the 8 bytes [`MAGIC`], then `qtap.v1.RecordedItem` messages,
//! each length-delimited (a varint length, then the message).

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::Path,
};

use anyhow::Context;
use prost::Message;
use qtap_proto::{
    compact::{Decoder, Record, RECORD_BYTES},
    v1::{follow_item::Item, FollowItem, RecordedItem, SessionEnd},
};

use super::follow::{lost_item, renderer, report, says, show_item, Stream, Summary};
use crate::cli::View;

/// How a recording starts.
pub const MAGIC: &[u8; 8] = b"qtaprec1";

/// A message longer than this is not one qtapd sent (its gRPC messages
/// are bounded far below): the file is damaged.
const ITEM_MAX: usize = 256 << 20;

/// Where `--write` puts a follow stream.
pub struct Writer {
    out: Box<dyn Write>,
    /// The file's name; `None`: stdout.
    path: Option<std::path::PathBuf>,
    /// One item, encoded.
    buf: Vec<u8>,
}

impl Writer {
    /// A recording at `path` (`-`: stdout), its header written.
    pub fn create(path: &Path) -> anyhow::Result<Writer> {
        // Batches are tens of kilobytes: a large buffer makes a write per
        // several of them.
        const BUFFER: usize = 1 << 20;
        let to_stdout = path.as_os_str() == "-";
        let out: Box<dyn Write> = if to_stdout {
            Box::new(BufWriter::with_capacity(BUFFER, io::stdout()))
        } else {
            let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
            Box::new(BufWriter::with_capacity(BUFFER, file))
        };
        let mut writer = Writer {
            out,
            path: (!to_stdout).then(|| path.to_owned()),
            buf: Vec::new(),
        };
        if let Err(e) = writer.out.write_all(MAGIC) {
            return Err(writer.failed(e));
        }
        Ok(writer)
    }

    /// What a failed write means: a closed stdout ends the follow quietly,
    /// as it does when rendering; anything else names the file.
    pub fn failed(&self, error: io::Error) -> anyhow::Error {
        match &self.path {
            None => crate::cmd::stdout_error(error),
            Some(path) => anyhow::Error::new(error).context(format!("write {}", path.display())),
        }
    }

    /// Counts daemon `index`'s `item` into `summary` (and says what it
    /// lost on stderr, as rendering does) and writes it; `restart`: the
    /// first item after a reconnection.
    pub fn item(
        &mut self,
        index: usize,
        host: &str,
        restart: bool,
        summary: &mut Summary,
        item: FollowItem,
    ) -> io::Result<()> {
        match &item.item {
            Some(Item::Compact(batch)) => {
                for chunk in batch.records.chunks_exact(RECORD_BYTES) {
                    let Ok(bytes) = chunk.try_into() else {
                        continue;
                    };
                    summary.event(Record::read(bytes).seq);
                }
            }
            Some(Item::Batch(batch)) => batch.events.iter().for_each(|e| summary.event(e.seq)),
            Some(Item::Event(event)) => summary.event(event.seq),
            Some(Item::Lost(lost)) => {
                lost_item(summary, lost, host);
            }
            Some(Item::Heartbeat(_)) => return Ok(()),
            Some(Item::End(_)) | None => {}
        }
        self.write(index, host, restart, item)
    }

    /// Keeps that daemon `index`'s session ended, and why.
    pub fn end(&mut self, index: usize, host: &str, detail: String) -> io::Result<()> {
        let end = SessionEnd {
            detail,
            ..SessionEnd::default()
        };
        let item = FollowItem {
            item: Some(Item::End(end)),
        };
        self.write(index, host, false, item)
    }

    /// Writes `item` of daemon `index` as one [`RecordedItem`].
    fn write(
        &mut self,
        index: usize,
        host: &str,
        restart: bool,
        item: FollowItem,
    ) -> io::Result<()> {
        let recorded = RecordedItem {
            stream: u32::try_from(index).unwrap_or(u32::MAX),
            host: host.to_owned(),
            restart,
            item: Some(item),
        };
        self.buf.clear();
        recorded
            .encode_length_delimited(&mut self.buf)
            .map_err(io::Error::other)?;
        self.out.write_all(&self.buf)
    }

    /// Writes out what is buffered.
    pub fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `qtapctl trace read FILE`: renders a recording as `follow` would have
/// rendered the stream it kept, and ends with the same counts.
pub fn read(path: &Path, view: &View) -> anyhow::Result<()> {
    let mut input: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(BufReader::with_capacity(1 << 20, io::stdin()))
    } else {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let name = path.display();
    let mut magic = [0; 8];
    // A file shorter than the header is no recording either.
    let whole = match input.read_exact(&mut magic) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("read {name}"))),
    };
    anyhow::ensure!(
        whole && &magic == MAGIC,
        "{name} is not a qtapctl recording (one starts with \"qtaprec1\"; \
         `qtapctl trace follow --write FILE` makes one)"
    );
    let mut renderer = renderer(view)?;
    let mut streams: HashMap<u32, (String, Summary, Decoder)> = HashMap::new();
    let mut buf = Vec::new();
    let mut items = 0_u64;
    let result = loop {
        let recorded = match next_item(&mut input, &mut buf) {
            Ok(Some(recorded)) => recorded,
            Ok(None) => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                break Err(anyhow::anyhow!(
                    "{name} ends inside item {items}: cut short (was it still being written?)"
                ))
            }
            Err(e) => break Err(anyhow::Error::new(e).context(format!("{name}, item {items}"))),
        };
        items += 1;
        let (host, summary, decoder) = streams
            .entry(recorded.stream)
            .or_insert_with(|| (recorded.host.clone(), Summary::default(), Decoder::new()));
        if recorded.restart {
            *decoder = Decoder::new();
        }
        let Some(item) = recorded.item else {
            continue;
        };
        if let Some(Item::End(end)) = &item.item {
            eprintln!("{}the session ended: {}", says(host), end.detail);
            continue;
        }
        let stream = Stream {
            summary,
            decoder,
            host,
        };
        if let Err(e) = show_item(renderer.as_mut(), stream, item) {
            break Err(e);
        }
    };
    let finished = renderer.finish().map_err(crate::cmd::stdout_error);
    let mut streams: Vec<_> = streams.into_iter().collect();
    streams.sort_by_key(|(index, _)| *index);
    let (hosts, summaries): (Vec<String>, Vec<Summary>) =
        streams.into_iter().map(|(_, (h, s, _))| (h, s)).unzip();
    report(&hosts, &summaries, None);
    result.and(finished)
}

/// The next item of a recording, read into `buf`; `None` at its end.
fn next_item(input: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<RecordedItem>> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut byte = [0];
        if input.read(&mut byte)? == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > ITEM_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an item of {len} bytes: the file is damaged"),
        ));
    }
    buf.resize(len, 0);
    input.read_exact(buf)?;
    RecordedItem::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtap_proto::v1::{LossStage, Lost};

    #[test]
    fn items_read_back_as_written_and_a_cut_file_is_an_error() {
        let items = [
            RecordedItem {
                stream: 1,
                host: "b".into(),
                restart: true,
                item: Some(FollowItem {
                    item: Some(Item::Lost(Lost {
                        count: 3,
                        stage: LossStage::DaemonQueue.into(),
                    })),
                }),
            },
            RecordedItem::default(),
        ];
        let mut file = Vec::new();
        for item in &items {
            item.encode_length_delimited(&mut file).unwrap();
        }
        let mut input = file.as_slice();
        let mut buf = Vec::new();
        for item in &items {
            assert_eq!(
                next_item(&mut input, &mut buf).unwrap().as_ref(),
                Some(item)
            );
        }
        assert!(next_item(&mut input, &mut buf).unwrap().is_none());
        // The last byte of the first item, and the second.
        let mut cut = &file[..file.len() - 2];
        next_item(&mut cut, &mut buf).unwrap_err();
    }
}
