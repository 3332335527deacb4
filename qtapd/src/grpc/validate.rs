//! Checking requests: what the handlers accept, as pure functions of the
//! decoded request and the caller, so that the fuzzers call exactly what
//! the service runs.

use qtap_proto::v1::{follow_trace_request, FollowTraceRequest, StartTraceRequest, TraceOptions};

use crate::{
    engine::{
        hub::{Owner, Spec},
        Caller, Target,
    },
    filter::Filter,
    limits::Limits,
    otlp,
};

pub use crate::limits::{DEFAULT_QUEUE_LEN, MAX_QUEUE_LEN};
/// Longest filter string accepted.
pub const MAX_FILTER_LEN: usize = 4096;

/// The session a `StartTrace` request asks for.
///
/// # Errors
/// `InvalidArgument` naming what is wrong; `PermissionDenied` for an OTLP
/// endpoint the caller may not name.
pub fn start(
    req: StartTraceRequest,
    caller: Caller,
    limits: &Limits,
) -> Result<Spec, tonic::Status> {
    spec(&req.filter, req.name, caller, req.options, false, limits)
}

/// What a `FollowTrace` request follows, and its queue length.
///
/// # Errors
/// `InvalidArgument` naming what is wrong.
pub fn follow(
    req: FollowTraceRequest,
    caller: Caller,
    limits: &Limits,
) -> Result<(Target, usize), tonic::Status> {
    let queue_len = limits.queue_len(caller, req.queue_len)?;
    let target = match req.target {
        Some(follow_trace_request::Target::Id(id)) => Target::Id(id),
        Some(follow_trace_request::Target::Filter(f)) => Target::Session(spec(
            &f,
            "follow".into(),
            caller,
            req.options,
            true,
            limits,
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
    limits: &Limits,
) -> Result<Spec, tonic::Status> {
    let options = options.unwrap_or_default();
    limits.check_capture(caller, options.capture_bytes)?;
    Limits::check_name(&name)?;
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
            limits.check_otlp(caller, endpoint)?;
            Some(options.otlp_endpoint.clone())
        }
    };
    let parsed =
        Filter::parse(filter).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    limits.check_terms(caller, parsed.len())?;
    let filter = if caller.is_root() {
        parsed
    } else {
        parsed.restricted_to_uid(caller.uid)
    };
    Ok(Spec {
        filter,
        name,
        owner: Owner { uid: caller.uid },
        idle_timeout: limits.idle_timeout(caller, options.idle_timeout_secs)?,
        ephemeral,
        capture_bytes: options.capture_bytes,
        otlp_endpoint,
    })
}
