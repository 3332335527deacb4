//! The `qtap.v1.Qtap` service: thin handlers that authenticate the caller,
//! parse and check the request, forward a [`Command`] to the engine, and
//! map errors to precise status codes.

mod batch;
pub mod socket;
#[cfg(test)]
mod tests;
pub mod validate;

use std::{pin::Pin, sync::Arc};

use qtap_proto::v1::{
    qtap_server::Qtap, ExplainProcessRequest, Explanation, FollowItem, FollowTraceRequest,
    GetStatusRequest, ListTracesRequest, ListTracesResponse, Session, StartTraceRequest, Status,
    StopTraceRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tonic::{transport::server::UdsConnectInfo, Request, Response};
use tracing::error;

use crate::{
    access::Creds,
    engine::{hub::HubError, Caller, Command, EngineError},
    limits::Limits,
    procfs, tls_stacks,
};

/// The service; holds only the way to the engine.
#[derive(Clone)]
pub struct Service {
    engine: mpsc::Sender<Command>,
    limits: Arc<Limits>,
    insecure_tcp: bool,
}

impl Service {
    /// `insecure_tcp`: plain-TCP callers are trusted as administrators
    /// (only with `--insecure-tcp`).
    #[must_use]
    pub fn new(engine: mpsc::Sender<Command>, limits: Arc<Limits>, insecure_tcp: bool) -> Service {
        Service {
            engine,
            limits,
            insecure_tcp,
        }
    }

    /// Who is calling: a unix-socket caller by its peer credentials; a
    /// TCP caller that presented a client certificate our CA signed (the
    /// TLS handshake refuses any other) as an administrator, like root.
    ///
    /// A `Caller` already in the request's extensions wins: extensions
    /// never come from the wire, only from layers in this process (the
    /// tests use one to call as different uids).
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, tonic::Status> {
        if let Some(caller) = request.extensions().get::<Caller>() {
            return Ok(*caller);
        }
        if let Some(info) = request.extensions().get::<UdsConnectInfo>() {
            let cred = info.peer_cred.ok_or_else(|| {
                tonic::Status::permission_denied("no peer credentials on the unix socket")
            })?;
            return Ok(Caller { uid: cred.uid() });
        }
        if request.peer_certs().is_some_and(|certs| !certs.is_empty()) || self.insecure_tcp {
            return Ok(Caller { uid: 0 });
        }
        Err(tonic::Status::permission_denied(
            "remote callers need a client certificate signed by qtapd's --client-ca",
        ))
    }

    /// The process at the other end of a unix-socket call, as qtapd's pid
    /// namespace numbers it (none when it is not visible there).
    fn peer_pid<T>(request: &Request<T>) -> Option<u32> {
        let cred = request.extensions().get::<UdsConnectInfo>()?.peer_cred?;
        u32::try_from(cred.pid()?).ok().filter(|&pid| pid != 0)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, tonic::Status> {
        let (tx, rx) = oneshot::channel();
        self.engine
            .send(make(tx))
            .await
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())
    }
}

fn unavailable() -> tonic::Status {
    tonic::Status::unavailable("qtapd is shutting down")
}

impl From<EngineError> for tonic::Status {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Hub(HubError::NotFound(_)) => tonic::Status::not_found(e.to_string()),
            EngineError::Hub(HubError::Full) => tonic::Status::resource_exhausted(e.to_string()),
            EngineError::PermissionDenied(_) => tonic::Status::permission_denied(e.to_string()),
            EngineError::Compile(_) => tonic::Status::invalid_argument(e.to_string()),
            EngineError::Limit(limit) => limit.into(),
            EngineError::Unavailable(_) => tonic::Status::failed_precondition(e.to_string()),
            EngineError::Kernel(_) => {
                error!(error = %e, "kernel error while serving a request");
                tonic::Status::internal(e.to_string())
            }
        }
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<FollowItem, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Qtap for Service {
    async fn start_trace(
        &self,
        request: Request<StartTraceRequest>,
    ) -> Result<Response<Session>, tonic::Status> {
        let caller = self.caller(&request)?;
        let spec = validate::start(request.into_inner(), caller, &self.limits)?;
        let session = self.ask(|reply| Command::Start { spec, reply }).await??;
        Ok(Response::new(session))
    }

    async fn stop_trace(
        &self,
        request: Request<StopTraceRequest>,
    ) -> Result<Response<Session>, tonic::Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().id;
        let session = self
            .ask(|reply| Command::Stop { id, caller, reply })
            .await??;
        Ok(Response::new(session))
    }

    async fn list_traces(
        &self,
        request: Request<ListTracesRequest>,
    ) -> Result<Response<ListTracesResponse>, tonic::Status> {
        let caller = self.caller(&request)?;
        let sessions = self.ask(|reply| Command::List { caller, reply }).await?;
        Ok(Response::new(ListTracesResponse { sessions }))
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<Status>, tonic::Status> {
        self.caller(&request)?;
        Ok(Response::new(
            self.ask(|reply| Command::Status { reply }).await?,
        ))
    }

    type FollowTraceStream = FollowStream;

    async fn follow_trace(
        &self,
        request: Request<FollowTraceRequest>,
    ) -> Result<Response<FollowStream>, tonic::Status> {
        let caller = self.caller(&request)?;
        let reader = Self::peer_pid(&request);
        let req = request.into_inner();
        let compact = req.compact;
        // A compact follower's queue holds the session's batches, made by
        // the hub: they go out one by one, like plain items.
        let form = if req.batch && !compact {
            batch::Form::Batched
        } else {
            batch::Form::Plain
        };
        let (target, queue_len) = validate::follow(req, caller, &self.limits)?;
        let (_, rx) = self
            .ask(|reply| Command::Follow {
                target,
                caller,
                queue_len,
                compact,
                reader,
                reply,
            })
            .await??;
        let stream: FollowStream = Box::pin(batch::Batches::new(rx, form).map(Ok));
        Ok(Response::new(stream))
    }

    /// Off the runtime's threads (it reads `/proc` and ELF files), and
    /// only of a process the caller may trace: checked before and again
    /// after the reads (of files and of the engine's fd state), so a pid
    /// reused meanwhile tells nothing.
    async fn explain_process(
        &self,
        request: Request<ExplainProcessRequest>,
    ) -> Result<Response<Explanation>, tonic::Status> {
        let caller = self.caller(&request)?;
        let pid = request.into_inner().pid;
        let allowed = move || -> Result<(), tonic::Status> {
            if procfs::uid(pid).is_none() {
                return Err(tonic::Status::not_found(format!("no process {pid}")));
            }
            if caller.is_root()
                || Creds::of(pid).and_then(|creds| creds.visible_to()) == Some(caller.uid)
            {
                Ok(())
            } else {
                Err(tonic::Status::permission_denied(format!(
                    "process {pid} is root's to examine: it is not uid {}'s, or it gained \
                     privileges (setuid, capabilities) or is not dumpable",
                    caller.uid
                )))
            }
        };
        // The engine's view first: the last access check comes after it.
        let tls_fds = self.ask(|reply| Command::TlsFds { pid, reply }).await?;
        let (exe, stacks) = tokio::task::spawn_blocking(move || {
            allowed()?;
            let found = tls_stacks::explain(pid)
                .ok_or_else(|| tonic::Status::not_found(format!("no process {pid}")))?;
            allowed()?;
            Ok::<_, tonic::Status>(found)
        })
        .await
        .map_err(|_| unavailable())??;
        Ok(Response::new(Explanation {
            pid,
            exe,
            stacks,
            traced: tls_fds.is_some(),
            tls_fds: tls_fds.unwrap_or_default(),
        }))
    }
}
