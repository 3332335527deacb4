//! User-space side of the contract: `aya::Pod` for the types qtapd reads
//! from or writes to maps. Only built with the `user` feature.

use crate::{
    Config, Conn, ConnKey, CredOffsets, FileOffsets, GoKey, PatternKey, Pending, ProcSel,
    TaskOffsets, TlsPending,
};

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte
// arrays with explicit padding fields, so every bit pattern is valid.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for Conn {}
// SAFETY: as above.
unsafe impl aya::Pod for CredOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for FileOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for TaskOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PatternKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ProcSel {}
// SAFETY: as above.
unsafe impl aya::Pod for Pending {}
// SAFETY: as above.
unsafe impl aya::Pod for TlsPending {}
// SAFETY: as above.
unsafe impl aya::Pod for GoKey {}
