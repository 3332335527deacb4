//! Renderers: each turns events into lines on stdout.

pub mod console;
pub mod json;

use std::io;

use qtap_proto::v1::Event;

use crate::Output;

/// One way of showing events.
pub trait Render {
    /// Shows one event. An error means stdout is gone.
    fn event(&mut self, event: &Event) -> io::Result<()>;
}

/// The renderer for `--output`.
pub fn new(output: Output) -> Box<dyn Render> {
    match output {
        Output::Console => Box::new(console::Console::stdout()),
        Output::Json => Box::new(json::Json::new(io::stdout())),
    }
}
