//! Checking requests: what the handlers accept, as pure functions of the
//! decoded request and the caller, so that the fuzzers call exactly what
//! the service runs.

use std::time::Duration;

use qtap_common::limit;
use qtap_proto::v1::{follow_trace_request, FollowTraceRequest, StartTraceRequest, TraceOptions};

use crate::{
    engine::{
        hub::{Owner, Spec},
        Caller, Target,
    },
    filter::Filter,
    otlp,
};

/// Default follower queue length (items).
pub const DEFAULT_QUEUE_LEN: usize = 4096;
/// Largest follower queue a client may ask for.
pub const MAX_QUEUE_LEN: usize = 1 << 20;
/// Longest filter string accepted.
pub const MAX_FILTER_LEN: usize = 4096;

/// The session a `StartTrace` request asks for.
///
/// # Errors
/// `InvalidArgument` naming what is wrong.
pub fn start(
    req: StartTraceRequest,
    caller: Caller,
    default_idle: Duration,
) -> Result<Spec, tonic::Status> {
    spec(
        &req.filter,
        req.name,
        caller,
        req.options,
        false,
        default_idle,
    )
}

/// What a `FollowTrace` request follows, and its queue length.
///
/// # Errors
/// `InvalidArgument` naming what is wrong.
pub fn follow(
    req: FollowTraceRequest,
    caller: Caller,
    default_idle: Duration,
) -> Result<(Target, usize), tonic::Status> {
    let queue_len = match req.queue_len as usize {
        0 => DEFAULT_QUEUE_LEN,
        n if n > MAX_QUEUE_LEN => {
            return Err(tonic::Status::invalid_argument(format!(
                "queue_len {n} exceeds {MAX_QUEUE_LEN}"
            )));
        }
        n => n,
    };
    let target = match req.target {
        Some(follow_trace_request::Target::Id(id)) => Target::Id(id),
        Some(follow_trace_request::Target::Filter(f)) => Target::Session(spec(
            &f,
            "follow".into(),
            caller,
            req.options,
            true,
            default_idle,
        )?),
        None => {
            return Err(tonic::Status::invalid_argument(
                "give a session id or a filter to follow",
            ))
        }
    };
    Ok((target, queue_len))
}

/// A session spec for `filter` started by `caller`: a caller that is not
/// root only ever selects its own processes.
fn spec(
    filter: &str,
    name: String,
    caller: Caller,
    options: Option<TraceOptions>,
    ephemeral: bool,
    default_idle: Duration,
) -> Result<Spec, tonic::Status> {
    let options = options.unwrap_or_default();
    if options.capture_bytes as usize > limit::CAPTURE_MAX {
        return Err(tonic::Status::invalid_argument(format!(
            "capture_bytes {} exceeds {}",
            options.capture_bytes,
            limit::CAPTURE_MAX
        )));
    }
    if filter.len() > MAX_FILTER_LEN {
        return Err(tonic::Status::invalid_argument(format!(
            "the filter is {} bytes; the limit is {MAX_FILTER_LEN}",
            filter.len()
        )));
    }
    let otlp_endpoint = match options.otlp_endpoint.as_str() {
        "" => None,
        endpoint => {
            otlp::check_endpoint(endpoint).map_err(tonic::Status::invalid_argument)?;
            Some(options.otlp_endpoint.clone())
        }
    };
    let parsed =
        Filter::parse(filter).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let filter = if caller.is_root() {
        parsed
    } else {
        parsed.restricted_to_uid(caller.uid)
    };
    let idle_timeout = match options.idle_timeout_secs {
        0 => default_idle,
        secs => Duration::from_secs(u64::from(secs)),
    };
    Ok(Spec {
        filter,
        name,
        owner: Owner { uid: caller.uid },
        idle_timeout,
        ephemeral,
        capture_bytes: options.capture_bytes,
        otlp_endpoint,
    })
}
