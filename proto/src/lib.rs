//! qtap's gRPC wire contract, package `qtap.v1`. The session API (and its
//! `.proto` files) lands with the trace-session issue; this crate exists so
//! the workspace shape is fixed and `qtapctl` can depend on it alone.
