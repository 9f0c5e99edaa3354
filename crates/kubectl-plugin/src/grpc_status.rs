//! The agent's gRPC refusals, said as sentences a person can act on: what went wrong and what to
//! do, instead of a status code.

use diffkeeper_api::ContainerRecord;
use kube::ResourceExt;
use tonic::Code;

/// What was asked of the agent, for the explanation.
pub struct Call<'a> {
    /// The permission the agent checks, e.g. "get recordings/export".
    pub permission: &'a str,
    /// Who grants it, e.g. "the diffkeeper-snapshot or admin role".
    pub granted_by: &'a str,
    pub record: &'a ContainerRecord,
    /// How the agent was reached (see `agent::Agent::route`).
    pub route: &'a str,
}

pub fn explain(status: &tonic::Status, call: &Call<'_>) -> anyhow::Error {
    let said = status.message();
    let ns = call.record.namespace().unwrap_or_default();
    let node = &call.record.spec.node;
    let what = crate::target::describe(call.record);
    match status.code() {
        Code::Unauthenticated => anyhow::anyhow!(
            "the agent did not accept your credentials: {said}. It checks the bearer token with \
             the API server; pass one it accepts with --token or --token-file"
        ),
        Code::PermissionDenied => anyhow::anyhow!(
            "the agent refused: {said}. You need `{}` (group diffkeeper.io) in namespace {ns} \
             (ask for {})",
            call.permission,
            call.granted_by
        ),
        Code::NotFound => anyhow::anyhow!(
            "the agent of node {node} has no history of {what}: {said}. It may have been \
             dropped (the Recording was deleted, or retention expired)"
        ),
        Code::InvalidArgument | Code::OutOfRange => {
            anyhow::anyhow!("the agent could not do that for {what}: {said}")
        }
        Code::Unavailable => anyhow::anyhow!(
            "the agent {} is unavailable: {said}. The history of {what} lives only on node \
             {node}: if the agent is restarting try again; if the node is gone, so is the \
             history",
            call.route
        ),
        Code::DeadlineExceeded | Code::Cancelled => anyhow::anyhow!(
            "the call to the agent {} was cut off: {said}; try again",
            call.route
        ),
        code => anyhow::anyhow!("the agent {} failed ({code:?}): {said}", call.route),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn explained(code: Code, permission: &str) -> String {
        let record: ContainerRecord = serde_json::from_value(json!({
            "apiVersion": "diffkeeper.io/v1alpha1", "kind": "ContainerRecord",
            "metadata": { "name": "r", "namespace": "ci" },
            "spec": { "recording": "rec", "pod": { "name": "web", "uid": "u" },
                      "container": "app", "containerId": "containerd://0123",
                      "node": "node-a" },
        }))
        .unwrap();
        let call = Call {
            permission,
            granted_by: "the diffkeeper-snapshot or admin role",
            record: &record,
            route: "at 10.0.0.5:7443",
        };
        explain(&tonic::Status::new(code, "the agent's words"), &call).to_string()
    }

    #[test]
    fn refusals_say_what_to_do() {
        let s = explained(Code::Unauthenticated, "get recordings/export");
        assert!(
            s.starts_with("the agent did not accept your credentials: the agent's words"),
            "{s}"
        );
        assert!(s.contains("--token"), "{s}");
        let s = explained(Code::PermissionDenied, "get recordings/export");
        assert!(
            s.contains(
                "You need `get recordings/export` (group diffkeeper.io) in namespace ci \
                        (ask for the diffkeeper-snapshot or admin role)"
            ),
            "{s}"
        );
        let s = explained(Code::Unavailable, "get recordings/log");
        assert!(s.contains("at 10.0.0.5:7443 is unavailable"), "{s}");
        assert!(s.contains("lives only on node node-a"), "{s}");
        let s = explained(Code::NotFound, "get recordings/log");
        assert!(s.contains("has no history of pod/web container app"), "{s}");
    }
}
