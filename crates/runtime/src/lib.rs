#![forbid(unsafe_code)]
//! The runtime: where things live on the host, VM sandboxes with their agent, containers
//! and their supervisors. The CLI is a thin layer over this crate.

pub mod agent;
pub mod check;
pub mod container;
pub mod copy;
pub mod host;
pub mod network;
pub mod process;
mod records;
pub mod sandbox;
pub mod selftest;
pub mod supervisor;
pub mod time;
pub mod transfer;
pub mod volume;

pub use host::Host;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Vm(#[from] vessel_vm::VmError),
    #[error("{what} not found{}; {hint}", path.as_ref().map(|p| format!(" at {}", p.display())).unwrap_or_default())]
    Missing { what: &'static str, path: Option<std::path::PathBuf>, hint: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent did not become ready within {timeout:?}{}", boot_log_excerpt(.boot_log))]
    AgentTimeout { timeout: std::time::Duration, boot_log: String },
    #[error("the VM ended before its agent was ready ({exit}){}", boot_log_excerpt(.boot_log))]
    VmEndedEarly { exit: String, boot_log: String },
    #[error("cannot reach the agent")]
    AgentConnect(#[source] std::io::Error),
    #[error("agent call {call} failed: {status}")]
    AgentCall { call: &'static str, status: Box<tonic::Status> },
    #[error("cannot set up the agent connection")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Snapshot(#[from] vessel_image::snapshot::SnapshotError),
    #[error("cannot create the container's writable disk")]
    WritableDisk(#[from] vessel_image::RootfsError),
    #[error("{0}")]
    Mount(String),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Store(#[from] container::StoreError),
}

/// `outer: inner: innermost`, each cause once (a message that already quotes its cause
/// does not repeat it).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

fn boot_log_excerpt(log: &str) -> String {
    if log.trim().is_empty() {
        String::from(" (the guest printed nothing)")
    } else {
        format!("; the guest's console ends with:\n{log}")
    }
}
