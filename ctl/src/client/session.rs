//! The one place `quill` talks to a cluster from: who calls ([`Who`]: the client certificate of
//! `--identity DIR`, or `--as role:name` on a dev cluster, and the endpoints), a [`Session`] per
//! command (client id, serials, one mutual-TLS channel per endpoint), and the calls they share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{
    AckRequest, CaImportRequest, Caller, CancelRequest, CeremonyStartRequest, CeremonySubmitRequest, Delivered,
    IssuerCertImportRequest, WriteResult,
};

use super::Target;
use crate::client;

/// One write or HSM call may take this long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is calling, and where (the identity flags live in [`Target`]).
#[derive(clap::Args, Debug, Clone)]
pub struct Who {
    #[command(flatten)]
    pub target: Target,
}

/// A session with the cluster for one command: endpoints, caller, client id, serials.
pub(crate) struct Session {
    endpoints: Vec<String>,
    tls: client::Tls,
    channels: Mutex<HashMap<(String, u64), client::Chan>>,
    client_id: String,
    serial: u64,
    rt: tokio::runtime::Runtime,
}

impl Session {
    /// A session as `who` (every call is made with its client certificate).
    pub(crate) fn new(who: &Who) -> Result<Self> {
        let tls = who.target.tls()?;
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Ok(Session {
            endpoints: who.target.endpoints()?,
            client_id: format!("quill-{}-{}-{ms}", tls.actor.name, std::process::id()),
            tls,
            channels: Mutex::new(HashMap::new()),
            serial: 0,
            rt: tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start async runtime")?,
        })
    }

    /// The session's TLS identity.
    pub(crate) fn tls(&self) -> &client::Tls {
        &self.tls
    }

    /// A channel to `endpoint` (one per endpoint and timeout, reused: one handshake).
    pub(crate) fn chan(&self, endpoint: &str, timeout: Duration) -> Result<client::Chan> {
        let mut ch = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let k = (endpoint.to_string(), timeout.as_millis() as u64);
        if let Some(c) = ch.get(&k) {
            return Ok(c.clone());
        }
        let c = client::channel(&self.tls, endpoint, timeout)?;
        ch.insert(k, c.clone());
        Ok(c)
    }

    pub(crate) fn caller(&mut self) -> Caller {
        self.serial += 1;
        Caller { client_id: self.client_id.clone(), serial: self.serial }
    }

    /// A typed write through the Keys or Jobs service (`call` gets a channel and the caller):
    /// tried on each endpoint in turn and retried on transport failures and timeouts with the same
    /// caller (client id and serial), so it applies at most once. Returns the outcome detail; a
    /// refusal by the cluster is an error.
    pub(crate) fn typed_write<F, Fut>(&mut self, call: F) -> Result<String>
    where
        F: Fn(client::Chan, Caller) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<WriteResult>, tonic::Status>>,
    {
        let caller = self.caller();
        let endpoints = self.endpoints.clone();
        let (client_id, serial) = (caller.client_id.clone(), caller.serial);
        let r = self.rt.block_on(client::write_retrying(&endpoints, &client_id, serial, |ep| {
            let caller = caller.clone();
            let channel = self.chan(&ep, CALL_TIMEOUT);
            let call = &call;
            async move {
                let channel = channel.map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
                call(channel, caller).await
            }
        }))?;
        Ok(r.into_inner().detail)
    }

    /// A typed write of the Keys service.
    pub(crate) fn keys_write<F, Fut>(&mut self, call: F) -> Result<String>
    where
        F: Fn(KeysClient<client::Chan>, Caller) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<WriteResult>, tonic::Status>>,
    {
        self.typed_write(|ch, caller| call(KeysClient::new(ch), caller))
    }

    /// `Keys.CeremonyStart` with this session's caller.
    pub(crate) fn ceremony_start(&mut self, req: CeremonyStartRequest) -> Result<String> {
        self.keys_write(|mut c, caller| {
            let req = CeremonyStartRequest { caller: Some(caller), ..req.clone() };
            async move { c.ceremony_start(req).await }
        })
    }

    /// `Keys.CeremonySubmit` with this session's caller.
    pub(crate) fn ceremony_submit(&mut self, req: CeremonySubmitRequest) -> Result<String> {
        self.keys_write(|mut c, caller| {
            let req = CeremonySubmitRequest { caller: Some(caller), ..req.clone() };
            async move { c.ceremony_submit(req).await }
        })
    }

    /// `Keys.CaImport` with this session's caller.
    pub(crate) fn ca_import(&mut self, req: CaImportRequest) -> Result<String> {
        self.keys_write(|mut c, caller| {
            let req = CaImportRequest { caller: Some(caller), ..req.clone() };
            async move { c.ca_import(req).await }
        })
    }

    /// `Keys.IssuerCertImport` with this session's caller.
    pub(crate) fn issuer_cert_import(&mut self, req: IssuerCertImportRequest) -> Result<String> {
        self.keys_write(|mut c, caller| {
            let req = IssuerCertImportRequest { caller: Some(caller), ..req.clone() };
            async move { c.issuer_cert_import(req).await }
        })
    }

    /// `Jobs.Ack` with this session's caller: `delivered` is (stream, SHA-256 hex) per file.
    pub(crate) fn job_ack(&mut self, job: &str, delivered: Vec<(String, String)>) -> Result<String> {
        let delivered: Vec<Delivered> =
            delivered.into_iter().map(|(stream, sha256)| Delivered { stream, sha256 }).collect();
        self.typed_write(|ch, caller| {
            let req = AckRequest { caller: Some(caller), job: job.to_string(), delivered: delivered.clone() };
            async move { JobsClient::new(ch).ack(req).await }
        })
    }

    /// `Jobs.Cancel` with this session's caller.
    pub(crate) fn job_cancel(&mut self, job: &str) -> Result<String> {
        self.typed_write(|ch, caller| {
            let req = CancelRequest { caller: Some(caller), job: job.to_string() };
            async move { JobsClient::new(ch).cancel(req).await }
        })
    }

    /// The endpoints, in order of preference.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The async runtime of the session.
    pub(crate) fn rt(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// Call a service on the first endpoint that answers, with the shared retry policy: `f` gets
    /// a channel to the endpoint (HSM operations that carry their caller's serial, and reads).
    fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(client::Chan) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let endpoints = self.endpoints.clone();
        let r = self.rt.block_on(client::read_retrying(&endpoints, |ep| {
            let c = self.chan(&ep, CALL_TIMEOUT);
            let f = &f;
            async move {
                let c = c.map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
                f(c).await
            }
        }))?;
        Ok(r.into_inner())
    }

    /// Call the Keys service (see [`Session::call`]).
    pub(crate) fn call_keys<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(KeysClient<client::Chan>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(|c| f(KeysClient::new(c).max_decoding_message_size(64 << 20)))
    }

    /// Call the Exchange service (a partner's calls carry their caller's serial, so a retry
    /// applies at most once).
    pub(crate) fn call_exchange<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(quill_proto::v1::exchange_client::ExchangeClient<client::Chan>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(|c| f(quill_proto::v1::exchange_client::ExchangeClient::new(c)))
    }

    /// Call the Jobs service (its queries).
    pub(crate) fn call_jobs<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(JobsClient<client::Chan>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(|c| f(JobsClient::new(c).max_decoding_message_size(64 << 20)))
    }
}
