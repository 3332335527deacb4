//! `qtapctl trace …`: one file per subcommand.

mod follow;
mod list;
mod record;
mod start;
mod stop;

pub use follow::follow;
pub use list::list;
pub use record::read;
pub use start::start;
pub use stop::stop;
