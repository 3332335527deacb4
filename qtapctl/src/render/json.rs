//! `--output json`: one object per line, the same object as
//! `qtapd --bpf-trace --log-encoding=json` prints, plus `session`/`seq`.

use std::io::{self, Write};

use qtap_proto::{json, v1::Event, view::EventView};

use super::Render;

pub struct Json<W: Write> {
    out: W,
}

impl<W: Write> Json<W> {
    pub fn new(out: W) -> Json<W> {
        Json { out }
    }
}

impl<W: Write> Render for Json<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        json::write_line(&mut self.out, event)
    }

    fn view(&mut self, event: &EventView<'_>) -> io::Result<()> {
        json::write_view_line(&mut self.out, event)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
        crate::render::console::tests::golden("json.golden", &String::from_utf8(out).unwrap());
    }

    /// Events read in place print the same bytes as their messages.
    #[test]
    fn a_view_prints_what_its_message_does() {
        let (mut from_events, mut from_views) = (Vec::new(), Vec::new());
        for event in sample() {
            Json::new(&mut from_events).event(&event).unwrap();
            Json::new(&mut from_views).view(&event.view()).unwrap();
        }
        assert_eq!(from_views, from_events);
    }
}
