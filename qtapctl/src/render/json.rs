//! `--output json`: one object per line, the same object as
//! `qtapd --bpf-trace --log-encoding=json` prints, plus `session`/`seq`.

use std::io::{self, Write};

use qtap_proto::{json, v1::Event, view::EventView};

use super::Render;

pub struct Json<W: Write> {
    out: W,
    /// Lines not yet written: a batch's, at most [`Json::BUFFERED`] bytes.
    lines: Vec<u8>,
}

impl<W: Write> Json<W> {
    /// Bytes of lines held before they are written.
    const BUFFERED: usize = 64 * 1024;

    pub fn new(out: W) -> Json<W> {
        Json {
            out,
            lines: Vec::with_capacity(Json::<W>::BUFFERED + 4096),
        }
    }

    fn write_if_full(&mut self) -> io::Result<()> {
        if self.lines.len() >= Json::<W>::BUFFERED {
            self.out.write_all(&self.lines)?;
            self.lines.clear();
        }
        Ok(())
    }
}

impl<W: Write> Render for Json<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        json::push_view_line(&mut self.lines, &event.view());
        self.write_if_full()
    }

    fn view(&mut self, event: &EventView<'_>) -> io::Result<()> {
        json::push_view_line(&mut self.lines, event);
        self.write_if_full()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.write_all(&self.lines)?;
        self.lines.clear();
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::console::tests::sample;

    #[test]
    fn golden() {
        let mut out = Vec::new();
        let mut json = Json::new(&mut out);
        for event in sample() {
            json.event(&event).unwrap();
        }
        json.flush().unwrap();
        crate::render::console::tests::golden("json.golden", &String::from_utf8(out).unwrap());
    }

    /// Events read in place print the same bytes as their messages.
    #[test]
    fn a_view_prints_what_its_message_does() {
        let (mut from_events, mut from_views) = (Vec::new(), Vec::new());
        let (mut events, mut views) = (Json::new(&mut from_events), Json::new(&mut from_views));
        for event in sample() {
            events.event(&event).unwrap();
            views.view(&event.view()).unwrap();
        }
        events.flush().unwrap();
        views.flush().unwrap();
        drop((events, views));
        assert_eq!(from_views, from_events);
    }
}
