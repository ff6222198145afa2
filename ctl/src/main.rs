//! `quill`: the command line of Quill, in noun-verb form (`quill <noun> <verb>`).
//!
//! `quill demo` demonstrates the bundled HSM simulator; `quill dev` runs a local cluster of
//! `quilld` processes, `quill cluster` shows and changes its membership, and `quill bench raft`
//! measures it (DESIGN.md §11).

mod client;
mod exit_codes;
mod lab;
mod ops;
mod output;

use lab::{bench, bench_cluster, demo, demo_hsm, dev, prep, testset};
use ops::{audit, cluster, distribute, emv_ca, exchange, hotfolder, identity, issuers, jobs, keys, profile};

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Quill: EMV card data preparation and key management.
#[derive(Parser, Debug)]
#[command(name = "quill", version, about, long_about = None, after_help = exit_codes::HELP)]
struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The whole story on a local 5-node cluster (TEST keys only): dev cluster with hsm-sim
    /// tokens, SMK ceremony, the TEST key set by ceremonies, certified TEST issuer keys, a
    /// multi-application batch prepared across the nodes, fetched, checked, acknowledged, and the
    /// audit chain verified.
    Demo(demo::StoryArgs),
    /// The bundled HSM simulator step by step: TEST keys, ICC master keys, CVVs, a PIN with its
    /// PVV, an ICC key pair (nothing secret leaves the HSM).
    DemoHsm(demo_hsm::DemoArgs),
    /// Run a local cluster of quilld processes on loopback.
    #[command(subcommand)]
    Dev(DevCmd),
    /// Show and change a cluster's membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Form keys from custodian components, asynchronously (the SMK, or a working key).
    #[command(subcommand)]
    Ceremony(CeremonyCmd),
    /// The key inventory: list, show, generate, TR-31 import/export, life cycle.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Dual-control approvals (key export, destruction, SMK to a new node).
    #[command(subcommand)]
    Approve(ApproveCmd),
    /// The audit chain: verify, tail, export.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Card-product profiles.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// EMV CA public keys: list, import (verified against the scheme's check value).
    #[command(subcommand)]
    Ca(CaCmd),
    /// Issuer RSA key pairs (generated in an HSM) and their scheme certificates.
    #[command(subcommand)]
    Issuer(IssuerCmd),
    /// Partner key exchange: TR-31 blocks under a partner's zone master key.
    #[command(subcommand)]
    Exchange(ExchangeCmd),
    /// Sites keys are distributed to (other Quill clusters).
    #[command(subcommand)]
    Target(TargetCmd),
    /// Batches across the cluster: submit, watch, fetch, acknowledge, cancel, hot folder.
    #[command(subcommand)]
    Job(JobCmd),
    /// Data preparation in this process with the TEST keys (lab cards, checks).
    #[command(subcommand)]
    Prep(PrepCmd),
    /// The published benchmarks: Raft, data preparation, the whole cluster.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Certificates the cluster knows: revoke one, list the revoked, show who you are.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// A small PKI (node CA, client CA) for operators who do not bring their own.
    #[command(subcommand)]
    Pki(PkiCmd),
}

/// Certificates and the cluster's revocation list.
#[derive(Subcommand, Debug)]
enum IdentityCmd {
    /// Revoke a certificate (admin): refused on every listener and in apply from then on.
    Revoke(identity::RevokeArgs),
    /// The revoked certificates.
    List(identity::ListArgs),
    /// The identity this command line acts as (from --identity or --as).
    Whoami(identity::ListArgs),
}

/// A PKI directory: two CAs and what they issued.
#[derive(Subcommand, Debug)]
enum PkiCmd {
    /// Create the node CA and the client CA (keys 0600).
    Init(identity::PkiInitArgs),
    /// Issue a node certificate (--node ID) or a client certificate (--client ROLE:NAME).
    Issue(identity::PkiIssueArgs),
    /// Every certificate issued from the directory.
    List(identity::PkiListArgs),
    /// Certify a node's HSM transport key with the node CA (for KBPK transport to this cluster).
    TransportCert(identity::PkiTransportArgs),
}

/// EMV CA public keys the cluster verifies issuer certificates with.
#[derive(Subcommand, Debug)]
enum CaCmd {
    /// The CA keys held: built-in scheme TEST keys and imported ones.
    List(issuers::CaListArgs),
    /// Import a CA public key (admin), checked against the scheme's check value when given.
    Import(issuers::CaImportArgs),
    /// This cluster's own EMV CA keys (ca-officer): create in an HSM, list, export.
    #[command(subcommand)]
    Key(CaKeyCmd),
    /// Certify an issuer's request: `REQUEST --rid R --index I` asks the dual-control approval;
    /// `--approval A -o DIR` makes the certificate (Visa, Mastercard, UnionPay layouts).
    Certify(emv_ca::CertifyArgs),
    /// Revoke a certificate this CA issued (ca-officer).
    Revoke(emv_ca::RevokeArgs),
    /// The revoked issuer certificates: list, write as 9-byte entries, or import another CA's list.
    Revoked(emv_ca::RevokedArgs),
}

/// Sites keys are distributed to.
#[derive(Subcommand, Debug)]
enum TargetCmd {
    /// Register a site (admin): endpoint, CA certificate, the KBPK the two formed from components.
    Add(distribute::TargetAddArgs),
    /// The sites and the keys delivered to each.
    List(distribute::TargetListArgs),
    /// This site's signing key for KBPK transport (admin; made in the HSM on first use).
    Kdh(distribute::KdhArgs),
    /// Establish a target's KBPK by transport (admin): generated here, wrapped to the target
    /// node's certified transport key, signed, pushed, confirmed by its KCV.
    Transport(distribute::TransportArgs),
    /// Finish a transport or a key delivery whose answer was lost (admin): the target is asked
    /// which keys it holds from this site; recorded if the KCV is the one sent.
    Confirm(distribute::ConfirmArgs),
}

/// Partner key exchange (GIE-CB style).
#[derive(Subcommand, Debug)]
enum ExchangeCmd {
    /// Name a partner and its zone master key (admin).
    Zmk(exchange::ZmkArgs),
    /// Pin a partner's signing key (admin): it then sends its zone master key by transport.
    Kdh(exchange::KdhArgs),
    /// Share a key with a partner, or stop (admin).
    Share(exchange::ShareArgs),
    /// The partners, their ZMKs and what each sees.
    Partners(exchange::ListArgs),
    /// Import a key from a TR-31 block under your zone master key (partner).
    Import(exchange::ImportArgs),
    /// Export a key shared with you as a TR-31 block under your zone master key (partner).
    Export(exchange::ExportArgs),
    /// The keys you see, with their KCVs (partner).
    List(exchange::ListArgs),
}

/// The EMV CA's key pairs.
#[derive(Subcommand, Debug)]
enum CaKeyCmd {
    /// Generate a CA key pair in a node's HSM (the private half rests only under the SMK).
    Create(emv_ca::CaKeyCreateArgs),
    /// The CA keys, their state and what each issued.
    List(emv_ca::CaKeyListArgs),
    /// Write the public key with its check value: JSON, Visa-style and Mastercard-style files.
    Export(emv_ca::CaKeyExportArgs),
    /// Retire a CA key for good: it certifies nothing more and this cluster stops trusting
    /// certificates under it (tell every relying party to drop its RID and index).
    Revoke(emv_ca::CaKeyRevokeArgs),
}

/// Issuer RSA key pairs and issuer public-key certificates.
#[derive(Subcommand, Debug)]
enum IssuerCmd {
    /// Issuer key pairs and imported certificates.
    List(issuers::IssuerListArgs),
    /// Generate an issuer key pair in a node's HSM (admin).
    Generate(issuers::IssuerGenerateArgs),
    /// Import a scheme's issuer-certificate file; the cluster verifies it before accepting it.
    Import(issuers::IssuerImportArgs),
    /// Certify an issuer key with the Quill TEST CA and import the certificate (TEST only).
    CertifyTest(issuers::IssuerCertifyTestArgs),
    /// Write a certification request for the scheme's (or a Quill) CA, self-signed in an HSM.
    Request(emv_ca::IssuerRequestArgs),
}

/// Batches across the cluster.
#[derive(Subcommand, Debug)]
enum JobCmd {
    /// Stream a batch file to the cluster: validated against the profile, stored encrypted,
    /// split into chunks; prints the job id.
    Submit(jobs::SubmitArgs),
    /// Jobs and their states.
    List(jobs::ListArgs),
    /// One job: progress per node, cards/s, ETA, failures, which node prepared which chunk.
    Status(jobs::JobArgs),
    /// A progress bar until the job is done.
    Watch(jobs::JobArgs),
    /// Write the output streams (input order, each checked on arrival) to a directory.
    Fetch(jobs::FetchArgs),
    /// Record delivery and purge the job's input and output from the cluster.
    Ack(jobs::AckArgs),
    /// Stop a job and purge its data.
    Cancel(jobs::JobArgs),
    /// Watch a directory: submit each complete file, write its output atomically when done,
    /// acknowledge, move the input aside; survives restarts without submitting a file twice.
    HotFolder(hotfolder::HotFolderArgs),
}

/// Local data preparation with the TEST keys (lab cards, checks, measurements).
#[derive(Subcommand, Debug)]
enum PrepCmd {
    /// Prepare a batch file with a profile in this process, on a TEST token loaded with the
    /// documented TEST keys; writes the output streams.
    Run(prep::RunArgs),
    /// Check the output streams of a run: structure, digests, record counts, MACs.
    Check(prep::CheckArgs),
    /// Print one card of a run as GlobalPlatformPro `DGIxxxx=hex` lines.
    Gp(prep::GpArgs),
}

#[derive(Subcommand, Debug)]
enum ProfileCmd {
    /// Check a profile (every problem with file, line, field and reason), and with --input a
    /// batch file against its input layout; exit 3 when there are problems.
    Validate(profile::ValidateArgs),
    /// Print the profile reference (every field, type, default and limit); with --json the
    /// profile format as a JSON Schema (draft 2020-12).
    Schema,
}

#[derive(Subcommand, Debug)]
enum CeremonyCmd {
    /// Open a ceremony: `--key smk` (the cluster storage master key, AES-256) or `--key working`
    /// (a working key: --label, --usage, --alg); `--components N` custodians each submit one.
    Start(keys::CeremonyStartArgs),
    /// Submit your component (hex, or --generate): its KCV is computed and shown here, and it
    /// leaves this terminal only sealed to each recipient node's HSM transport key.
    Submit(keys::CeremonySubmitArgs),
    /// Ceremonies, their components' KCVs and custodians, and where the key formed.
    Status(keys::CeremonyIdArgs),
    /// Cancel an open ceremony; its sealed components are deleted.
    Cancel(keys::CeremonyIdArgs),
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Every key: id, usage, algorithm, KCV, state.
    List(keys::KeyListArgs),
    /// One key's record (never its value).
    Show(keys::KeyIdArgs),
    /// Generate a key inside a node's HSM; stored wrapped under the SMK.
    Generate(keys::KeyGenerateArgs),
    /// Import a key from a TR-31 key block under a key-block protection key (ZMK).
    Import(keys::KeyImportArgs),
    /// Export as TR-31: `--key K --kbpk Z` asks for dual-control approval; `--approval A` runs it.
    Export(keys::KeyExportArgs),
    /// Make a pending or suspended key active.
    Activate(keys::KeyIdArgs),
    /// Suspend an active key.
    Suspend(keys::KeyIdArgs),
    /// Retire a key (no new use).
    Retire(keys::KeyIdArgs),
    /// Send a key to a target site as TR-31 under the KBPK the two hold: `--key K --target T`
    /// asks for the dual-control approval; `--approval A --target T --target-identity DIR` pushes
    /// it and records the target's KCV.
    Distribute(distribute::DistributeArgs),
    /// Mark a key compromised (never used again).
    Compromised(keys::KeyIdArgs),
    /// Destroy a key: asks for a dual-control approval; destroyed once two custodians grant it.
    Destroy(keys::KeyIdArgs),
    /// Let a node that enrolled after the SMK ceremony receive the SMK (wrapped to its HSM
    /// transport key by a node that holds it) once two custodians approve.
    SmkGrant(keys::SmkGrantArgs),
    /// Rotate the SMK: a ceremony forms the next SMK on every node, every key block is switched
    /// to it in one step, and every node destroys the old SMK in its HSM.
    RotateSmk(keys::RotateSmkArgs),
    /// The SMK's KCV, a rotation under way, the SMKs it replaced, and each node's state.
    Smk(keys::SmkShowArgs),
}

#[derive(Subcommand, Debug)]
enum ApproveCmd {
    /// Every approval and its state.
    List(keys::ApproveListArgs),
    /// Grant an approval (custodian; not the requester; two distinct custodians approve).
    Grant(keys::ApproveIdArgs),
    /// Deny an approval.
    Deny(keys::ApproveIdArgs),
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Recompute the chain and every MAC and seal, compare with the other members, hold it to
    /// anchors; exit 3 naming the first broken record.
    Verify(audit::AuditVerifyArgs),
    /// Append the newest seal of the verified chain to an anchors file kept outside the cluster.
    Anchor(audit::AuditAnchorArgs),
    /// The last records, one line each.
    Tail(audit::AuditTailArgs),
    /// Records as JSON lines (all, or from --from).
    Export(audit::AuditTailArgs),
    /// Write the oldest live records to an archive file (MACed by the cluster's audit key) and ask
    /// the dual-control approval that prunes them (auditors).
    Archive(audit::AuditArchiveArgs),
    /// Prune the records of an archive once two custodians granted its approval (auditors).
    Prune(audit::AuditPruneArgs),
}

#[derive(Subcommand, Debug)]
enum DevCmd {
    /// Start a local cluster (or restart the one already in --dir).
    ///
    /// Writes D/node-<id>/node.toml and a data dir per node, starts one `quilld --config
    /// D/node-<id>/node.toml` per node (log in D/node-<id>/quilld.log, pid in D/node-<id>/pid),
    /// waits until each answers /health, initialises the cluster with every node as a voter,
    /// waits for a leader and writes D/env. On a directory that already holds a cluster it starts
    /// the nodes that are not running, with the same configs, and does not initialise again.
    Up(dev::UpArgs),
    /// Stop the local cluster: SIGTERM, then SIGKILL after 10 s; data kept unless --wipe.
    Down(dev::DownArgs),
    /// Load the published TEST key set (docs/test-keys.md) into the cluster by ceremonies, with
    /// the TEST CA and certified TEST issuer keys. TEST only: never for real cards.
    LoadTestKeys(testset::LoadArgs),
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Every member's role, term, leader, log, committed and applied index, and reachability.
    ///
    /// Asks the endpoints given (or those of D/env), learns the membership from their answers
    /// and asks every member. With --json: one document with `leader` (the leader's id) and
    /// `nodes`.
    Status(cluster::StatusArgs),
    /// Join a node as a learner (it replicates but does not vote; `promote` it next).
    Add(cluster::AddArgs),
    /// Make a learner a voter.
    Promote(cluster::IdArgs),
    /// Take a node out of the cluster. Its data must not be reused without adding it again.
    Remove(cluster::IdArgs),
    /// Enrolled nodes and their HSM transport-key fingerprints (what custodians pin).
    Nodes(cluster::NodesArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Committed commands/s and p50/p99 commit latency of 64-byte commands on a running cluster.
    Raft(bench::RaftArgs),
    /// Cards per second of a DDA profile on one HSM, against its ICC key generation rate (pool
    /// off, then a warm pool).
    Prep(prep::BenchArgs),
    /// End-to-end cards/s of a local dev cluster (submit to fetched output), Raft bytes per
    /// card, against the single-node figure of the same profile.
    Cluster(bench_cluster::ClusterBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let r = match &cli.cmd {
        Cmd::Demo(args) => demo::run(args, json),
        Cmd::DemoHsm(args) => demo_hsm::run(args, json),
        Cmd::Dev(DevCmd::Up(args)) => dev::up(args, json),
        Cmd::Dev(DevCmd::Down(args)) => dev::down(args, json),
        Cmd::Dev(DevCmd::LoadTestKeys(a)) => testset::load(a, json),
        Cmd::Cluster(ClusterCmd::Status(args)) => cluster::status(args, json),
        Cmd::Cluster(ClusterCmd::Add(args)) => cluster::add(args, json),
        Cmd::Cluster(ClusterCmd::Promote(args)) => cluster::promote(args, json),
        Cmd::Cluster(ClusterCmd::Remove(args)) => cluster::remove(args, json),
        Cmd::Cluster(ClusterCmd::Nodes(args)) => cluster::nodes(args, json),
        Cmd::Ceremony(CeremonyCmd::Start(a)) => keys::ceremony_start(a, json),
        Cmd::Ceremony(CeremonyCmd::Submit(a)) => keys::ceremony_submit(a, json),
        Cmd::Ceremony(CeremonyCmd::Status(a)) => keys::ceremony_status(a, json),
        Cmd::Ceremony(CeremonyCmd::Cancel(a)) => keys::ceremony_cancel(a, json),
        Cmd::Key(KeyCmd::List(a)) => keys::key_list(a, json),
        Cmd::Key(KeyCmd::Show(a)) => keys::key_show(a, json),
        Cmd::Key(KeyCmd::Generate(a)) => keys::key_generate(a, json),
        Cmd::Key(KeyCmd::Import(a)) => keys::key_import(a, json),
        Cmd::Key(KeyCmd::Export(a)) => keys::key_export(a, json),
        Cmd::Key(KeyCmd::Activate(a)) => keys::key_set_state(a, "active", json),
        Cmd::Key(KeyCmd::Suspend(a)) => keys::key_set_state(a, "suspended", json),
        Cmd::Key(KeyCmd::Retire(a)) => keys::key_set_state(a, "retired", json),
        Cmd::Key(KeyCmd::Distribute(a)) => distribute::distribute(a, json),
        Cmd::Key(KeyCmd::Compromised(a)) => keys::key_set_state(a, "compromised", json),
        Cmd::Key(KeyCmd::Destroy(a)) => keys::key_destroy(a, json),
        Cmd::Key(KeyCmd::SmkGrant(a)) => keys::smk_grant(a, json),
        Cmd::Key(KeyCmd::RotateSmk(a)) => keys::rotate_smk(a, json),
        Cmd::Key(KeyCmd::Smk(a)) => keys::smk_show(a, json),
        Cmd::Approve(ApproveCmd::List(a)) => keys::approve_list(a, json),
        Cmd::Approve(ApproveCmd::Grant(a)) => keys::approve_decide(a, true, json),
        Cmd::Approve(ApproveCmd::Deny(a)) => keys::approve_decide(a, false, json),
        Cmd::Audit(AuditCmd::Verify(a)) => audit::audit_verify(a, json),
        Cmd::Audit(AuditCmd::Anchor(a)) => audit::audit_anchor(a, json),
        Cmd::Audit(AuditCmd::Tail(a)) => audit::audit_tail(a, false, json),
        Cmd::Audit(AuditCmd::Export(a)) => audit::audit_tail(a, true, json),
        Cmd::Audit(AuditCmd::Archive(a)) => audit::audit_archive(a, json),
        Cmd::Audit(AuditCmd::Prune(a)) => audit::audit_prune(a, json),
        Cmd::Profile(ProfileCmd::Validate(a)) => profile::validate(a, json),
        Cmd::Profile(ProfileCmd::Schema) => profile::schema(json),
        Cmd::Ca(CaCmd::List(a)) => issuers::ca_list(a, json),
        Cmd::Ca(CaCmd::Import(a)) => issuers::ca_import(a, json),
        Cmd::Ca(CaCmd::Key(CaKeyCmd::Create(a))) => emv_ca::key_create(a, json),
        Cmd::Ca(CaCmd::Key(CaKeyCmd::List(a))) => emv_ca::key_list(a, json),
        Cmd::Ca(CaCmd::Key(CaKeyCmd::Export(a))) => emv_ca::key_export(a, json),
        Cmd::Ca(CaCmd::Key(CaKeyCmd::Revoke(a))) => emv_ca::key_revoke(a, json),
        Cmd::Ca(CaCmd::Certify(a)) => emv_ca::certify(a, json),
        Cmd::Ca(CaCmd::Revoke(a)) => emv_ca::revoke(a, json),
        Cmd::Ca(CaCmd::Revoked(a)) => emv_ca::revoked(a, json),
        Cmd::Issuer(IssuerCmd::Request(a)) => emv_ca::issuer_request(a, json),
        Cmd::Exchange(ExchangeCmd::Zmk(a)) => exchange::zmk(a, json),
        Cmd::Exchange(ExchangeCmd::Share(a)) => exchange::share(a, json),
        Cmd::Exchange(ExchangeCmd::Partners(a)) => exchange::partners(a, json),
        Cmd::Target(TargetCmd::Add(a)) => distribute::target_add(a, json),
        Cmd::Target(TargetCmd::List(a)) => distribute::target_list(a, json),
        Cmd::Target(TargetCmd::Kdh(a)) => distribute::kdh(a, json),
        Cmd::Target(TargetCmd::Transport(a)) => distribute::transport(a, json),
        Cmd::Target(TargetCmd::Confirm(a)) => distribute::confirm(a, json),
        Cmd::Exchange(ExchangeCmd::Kdh(a)) => exchange::kdh(a, json),
        Cmd::Exchange(ExchangeCmd::Import(a)) => exchange::import(a, json),
        Cmd::Exchange(ExchangeCmd::Export(a)) => exchange::export(a, json),
        Cmd::Exchange(ExchangeCmd::List(a)) => exchange::list(a, json),
        Cmd::Issuer(IssuerCmd::List(a)) => issuers::issuer_list(a, json),
        Cmd::Issuer(IssuerCmd::Generate(a)) => issuers::issuer_generate(a, json),
        Cmd::Issuer(IssuerCmd::Import(a)) => issuers::issuer_import(a, json),
        Cmd::Issuer(IssuerCmd::CertifyTest(a)) => issuers::issuer_certify_test(a, json),
        Cmd::Job(JobCmd::Submit(a)) => jobs::submit(a, json),
        Cmd::Job(JobCmd::List(a)) => jobs::list(a, json),
        Cmd::Job(JobCmd::Status(a)) => jobs::status(a, json),
        Cmd::Job(JobCmd::Watch(a)) => jobs::watch(a, json),
        Cmd::Job(JobCmd::Fetch(a)) => jobs::fetch(a, json),
        Cmd::Job(JobCmd::Ack(a)) => jobs::ack(a, json),
        Cmd::Job(JobCmd::Cancel(a)) => jobs::cancel(a, json),
        Cmd::Job(JobCmd::HotFolder(a)) => hotfolder::run(a, json),
        Cmd::Prep(PrepCmd::Run(a)) => prep::run(a, json),
        Cmd::Prep(PrepCmd::Check(a)) => prep::check(a, json),
        Cmd::Prep(PrepCmd::Gp(a)) => prep::gp(a, json),
        Cmd::Bench(BenchCmd::Raft(args)) => bench::raft(args, json),
        Cmd::Bench(BenchCmd::Prep(a)) => prep::bench(a, json),
        Cmd::Bench(BenchCmd::Cluster(a)) => bench_cluster::run(a, json),
        Cmd::Identity(IdentityCmd::Revoke(a)) => identity::revoke(a, json),
        Cmd::Identity(IdentityCmd::List(a)) => identity::list(a, json),
        Cmd::Identity(IdentityCmd::Whoami(a)) => identity::whoami(a, json),
        Cmd::Pki(PkiCmd::Init(a)) => identity::pki_init(a, json),
        Cmd::Pki(PkiCmd::Issue(a)) => identity::pki_issue(a, json),
        Cmd::Pki(PkiCmd::List(a)) => identity::pki_list(a, json),
        Cmd::Pki(PkiCmd::TransportCert(a)) => identity::pki_transport_cert(a, json),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the headline and its causes, joined; the exit code from its class.
            eprintln!("quill: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(exit_codes::of(&e))
        }
    }
}
