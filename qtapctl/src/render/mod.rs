//! Renderers: each turns events into lines on stdout.

pub mod console;
pub mod flows;
pub mod json;

use std::io;

use qtap_proto::v1::Event;

use crate::{GroupBy, Output};

/// One way of showing events.
pub trait Render {
    /// Shows one event. An error means stdout is gone.
    fn event(&mut self, event: &Event) -> io::Result<()>;

    /// Called once when the stream ends.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The renderer for `--output` and `--group-by`.
pub fn new(output: Output, group_by: Option<GroupBy>) -> Box<dyn Render> {
    if group_by == Some(GroupBy::Fd) {
        return Box::new(flows::Flows::new(io::stdout()));
    }
    match output {
        Output::Console => Box::new(console::Console::stdout()),
        Output::Json => Box::new(json::Json::new(io::stdout())),
    }
}
