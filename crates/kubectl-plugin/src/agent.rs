//! Reaching the agent that keeps a container's history: which way (through the API server's
//! port-forward, or directly), which CA to trust, and which bearer token to show it.

use std::path::PathBuf;

use anyhow::{bail, Context};
use diffkeeper_api::ContainerRecord;
use diffkeeper_rpc::AgentConnection;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::cluster::{Cluster, ClusterArgs};
use crate::target::TargetArgs;
use crate::tunnel::PortForwardConnector;

/// The ConfigMap the operator puts in every recorded namespace: the CA agents' certificates
/// chain to.
const CA_CONFIGMAP: &str = "diffkeeper-agent-ca";
/// The labels the chart gives agent pods (the instance label varies with the release name).
const AGENT_LABELS: &str = "app.kubernetes.io/name=diffkeeper,app.kubernetes.io/component=agent";
/// The chart's default agent port, for agent pods that do not name theirs.
const DEFAULT_AGENT_PORT: u16 = 7443;

/// How to reach the agent, shared by `log` and `export`.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The namespace DiffKeeper's agents run in (where the chart was installed).
    #[arg(long, value_name = "NAMESPACE", default_value = "diffkeeper")]
    agent_namespace: String,
    /// Reach the agent at HOST:PORT directly, not through the API server.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "direct")]
    agent_address: Option<String>,
    /// Reach the agent directly at the address it advertises in the record (status.agent), not
    /// through the API server.
    #[arg(long)]
    direct: bool,
    /// Trust this CA certificate (PEM) for the agent, instead of ConfigMap diffkeeper-agent-ca in
    /// the pod's namespace.
    #[arg(long, value_name = "FILE")]
    agent_ca: Option<PathBuf>,
    /// The bearer token to show the agent (default: your kubeconfig user's).
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the bearer token to show the agent from FILE.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// An open connection, and where it goes, for messages about it.
pub struct Agent {
    pub connection: AgentConnection,
    pub route: String,
}

impl AgentArgs {
    /// The record `target` names and a connection to the agent that keeps its history: what
    /// `log` and `export` start from.
    pub async fn reach(
        &self,
        cluster: &ClusterArgs,
        target: &TargetArgs,
    ) -> anyhow::Result<(ContainerRecord, Agent)> {
        let cluster = cluster.connect().await?;
        let token = self.token(&cluster).await?;
        let record =
            crate::target::find_record(&cluster.client, &cluster.namespace, target).await?;
        let agent = self.connect(&cluster, &record, token).await?;
        Ok((record, agent))
    }

    /// The credentials the agent will see: flags first, then the kubeconfig user's token.
    /// Resolved before anything else, so a user without a token learns it at once.
    async fn token(&self, cluster: &Cluster) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.trim().to_string());
        }
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            if t.trim().is_empty() {
                bail!("the token file {} is empty", path.display());
            }
            return Ok(t.trim().to_string());
        }
        crate::cluster::kubeconfig_token(&cluster.config).await
    }

    /// Connects to the agent that keeps `record`'s history.
    async fn connect(
        &self,
        cluster: &Cluster,
        record: &ContainerRecord,
        token: String,
    ) -> anyhow::Result<Agent> {
        let ca = self.ca(cluster, record).await?;
        let node = &record.spec.node;
        let unreachable = |route: &str| {
            format!(
                "could not reach the agent {route}; the history of {} lives only on node {node}, \
                 so its agent must be running to read it",
                crate::target::describe(record)
            )
        };
        if let Some(address) = &self.agent_address {
            // An address the user chose (a node port, a tunnel of their own) is not what the
            // certificate was minted for; every agent certificate carries the agents' name.
            let route = format!("at {address}");
            let connection = diffkeeper_rpc::connect(
                address,
                &ca,
                Some(diffkeeper_rpc::AGENT_SERVER_NAME),
                Some(token),
            )
            .await
            .with_context(|| unreachable(&route))?;
            return Ok(Agent { connection, route });
        }
        if self.direct {
            let advertised = record
                .status
                .as_ref()
                .and_then(|s| s.agent.clone())
                .with_context(|| {
                    format!(
                        "{} has no agent address (status.agent is empty): the agent of node \
                         {node} never reported it; leave out --direct to go through the API \
                         server",
                        crate::target::describe(record)
                    )
                })?;
            let address = host_port(&advertised);
            let route = format!("at {address} (advertised by node {node})");
            // The certificate names the address the agent advertises: check that one.
            let connection = diffkeeper_rpc::connect(address, &ca, None, Some(token))
                .await
                .with_context(|| unreachable(&route))?;
            return Ok(Agent { connection, route });
        }
        let (pod, port) = self.agent_pod(cluster, record).await?;
        let route = format!(
            "through the API server's port-forward to pod {}/{pod} on node {node}",
            self.agent_namespace
        );
        let connector = PortForwardConnector::new(
            Api::namespaced(cluster.client.clone(), &self.agent_namespace),
            &self.agent_namespace,
            &pod,
            port,
        );
        let connection = diffkeeper_rpc::connect_with(
            connector,
            &ca,
            diffkeeper_rpc::AGENT_SERVER_NAME,
            Some(token),
        )
        .await
        .with_context(|| unreachable(&route))?;
        Ok(Agent { connection, route })
    }

    /// The CA to trust: `--agent-ca`, else the operator's ConfigMap in the pod's namespace.
    async fn ca(&self, cluster: &Cluster, record: &ContainerRecord) -> anyhow::Result<Vec<u8>> {
        if let Some(path) = &self.agent_ca {
            return std::fs::read(path)
                .with_context(|| format!("reading the agent CA {}", path.display()));
        }
        let ns = record.namespace().unwrap_or_default();
        let fix = format!(
            "the operator keeps it in every namespace with a Recording; or pass the CA \
             certificate yourself with --agent-ca FILE (`kubectl get secret diffkeeper-ca -n \
             {} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d`)",
            self.agent_namespace
        );
        let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns);
        let cm = match configmaps.get_opt(CA_CONFIGMAP).await {
            Ok(Some(cm)) => cm,
            Ok(None) => {
                bail!("ConfigMap {ns}/{CA_CONFIGMAP} with the agents' CA is missing: {fix}")
            }
            Err(kube::Error::Api(s)) if s.code == 403 => bail!(
                "you may not read ConfigMap {ns}/{CA_CONFIGMAP} (the agents' CA): you need `get \
                 configmaps` in namespace {ns}; or pass the CA with --agent-ca FILE"
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("reading ConfigMap {ns}/{CA_CONFIGMAP}"))
            }
        };
        match cm.data.and_then(|mut d| d.remove("ca.crt")) {
            Some(pem) if !pem.trim().is_empty() => Ok(pem.into_bytes()),
            _ => bail!("ConfigMap {ns}/{CA_CONFIGMAP} has no ca.crt: {fix}"),
        }
    }

    /// The running agent pod on the record's node, and its gRPC port.
    async fn agent_pod(
        &self,
        cluster: &Cluster,
        record: &ContainerRecord,
    ) -> anyhow::Result<(String, u16)> {
        let ns = &self.agent_namespace;
        let node = &record.spec.node;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
        let params = ListParams::default()
            .labels(AGENT_LABELS)
            .fields(&format!("spec.nodeName={node}"));
        let list = match pods.list(&params).await {
            Ok(list) => list,
            Err(kube::Error::Api(s)) if s.code == 403 => bail!(
                "you may not list pods in namespace {ns} to find the agent of node {node}: you \
                 need `list pods` and `create pods/portforward` there; or reach the agent \
                 directly with --direct or --agent-address"
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("listing the agent pods in namespace {ns}"))
            }
        };
        // Field selectors on nodeName are honoured by every API server; filtering again keeps a
        // server that ignored it from sending us to another node's agent.
        let running = list.items.into_iter().find(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        let Some(pod) = running else {
            bail!(
                "no running DiffKeeper agent on node {node} (no pod labelled {AGENT_LABELS} in \
                 namespace {ns} there). The history of {} lives only on that node: if the node \
                 is gone, so is the history; if the agent is restarting, try again. Installed \
                 elsewhere? Pass --agent-namespace",
                crate::target::describe(record)
            );
        };
        let port = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("grpc"))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .unwrap_or(DEFAULT_AGENT_PORT);
        Ok((pod.name_any(), port))
    }
}

/// `https://10.0.0.5:7443` → `10.0.0.5:7443`: the record keeps a URL, the client wants an address.
fn host_port(endpoint: &str) -> &str {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    rest.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    #[test]
    fn advertised_endpoints_become_addresses() {
        assert_eq!(super::host_port("https://10.0.0.5:7443"), "10.0.0.5:7443");
        assert_eq!(
            super::host_port("https://[fd00::5]:7443/"),
            "[fd00::5]:7443"
        );
        assert_eq!(super::host_port("node-a:7443"), "node-a:7443");
    }
}
