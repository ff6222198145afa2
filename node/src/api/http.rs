//! The HTTP endpoint: `GET /health` (200 `ok` while Raft runs, 503 otherwise), `GET /metrics`
//! (Prometheus text format) and `GET /raft` (openraft's metrics as JSON).

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::network::Raft;

/// The router of the HTTP endpoint.
pub fn router(raft: Raft) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/raft", get(raft_json))
        .with_state(raft)
}

async fn health(State(raft): State<Raft>) -> impl IntoResponse {
    match &raft.metrics().borrow().running_state {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(fatal) => (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {fatal}")),
    }
}

async fn metrics(State(raft): State<Raft>) -> impl IntoResponse {
    let m = raft.metrics().borrow().clone();
    let index = |l: Option<openraft::LogId<u64>>| l.map(|l| l.index).unwrap_or(0);
    let gauges: [(&str, &str, u64); 9] = [
        ("quill_raft_term", "Current Raft term.", m.current_term),
        ("quill_raft_last_log_index", "Index of the last log entry.", m.last_log_index.unwrap_or(0)),
        ("quill_raft_applied_index", "Index of the last applied log entry.", index(m.last_applied)),
        ("quill_raft_snapshot_index", "Last log index covered by the current snapshot.", index(m.snapshot)),
        ("quill_raft_purged_index", "Index of the last purged log entry.", index(m.purged)),
        ("quill_raft_is_leader", "1 if this node is the leader.", u64::from(m.state == openraft::ServerState::Leader)),
        (
            "quill_raft_current_leader",
            "Id of the current leader (0 when none is known).",
            m.current_leader.unwrap_or(0),
        ),
        ("quill_raft_membership_index", "Log index of the effective membership.", index(*m.membership_config.log_id())),
        ("quill_raft_running", "1 while Raft runs.", u64::from(m.running_state.is_ok())),
    ];
    let mut body = String::new();
    for (name, help, value) in gauges {
        // Writing into a String cannot fail.
        let _ = writeln!(body, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{}\"}} {value}", m.id);
    }
    let name = "quill_raft_log_bytes_appended_total";
    let bytes = crate::raft::log_store::LOG_BYTES_APPENDED.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        body,
        "# HELP {name} Bytes of encoded log entries appended to this node's log.\n# TYPE {name} counter\n{name}{{node=\"{}\"}} {bytes}",
        m.id
    );
    let name = "quill_state_divergences_total";
    let n = crate::api::DIVERGENCES.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        body,
        "# HELP {name} State hashes of another node that differed from this leader's at one applied index (an alarm).\n# TYPE {name} counter\n{name}{{node=\"{}\"}} {n}",
        m.id
    );
    if let Some(ms) = m.millis_since_quorum_ack {
        let name = "quill_raft_millis_since_quorum_ack";
        let _ = writeln!(
            body,
            "# HELP {name} Leader only: ms since a quorum last acknowledged.\n# TYPE {name} gauge\n{name}{{node=\"{}\"}} {ms}",
            m.id
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn raft_json(State(raft): State<Raft>) -> impl IntoResponse {
    let m = raft.metrics().borrow().clone();
    match serde_json::to_string_pretty(&m) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
