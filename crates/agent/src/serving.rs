//! The agent's gRPC endpoint: a serving certificate minted from the cluster's DiffKeeper CA,
//! for the address the agent advertises, and the server of `diffkeeper-rpc` over the catalog.

use crate::AgentError;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use std::net::IpAddr;
use std::time::Duration;

/// Reads the CA from Secret `namespace/name` (`ca.crt`, `ca.key`), waiting for the operator to
/// create it on a fresh cluster, and mints a certificate valid for `advertise`'s host, the node
/// name and the well-known name tunnels use.
pub async fn identity(
    client: &Client,
    ca_secret: &str,
    advertise: &str,
    node: &str,
) -> Result<diffkeeper_rpc::TlsIdentity, AgentError> {
    let (namespace, name) = ca_secret.split_once('/').ok_or_else(|| {
        AgentError::Config(format!(
            "--ca-secret={ca_secret:?} must be NAMESPACE/NAME, e.g. diffkeeper/diffkeeper-ca"
        ))
    })?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut waited = Duration::ZERO;
    let secret = loop {
        match secrets.get_opt(name).await {
            Ok(Some(secret)) => break secret,
            Ok(None) => {
                if waited.as_secs().is_multiple_of(30) {
                    tracing::info!(
                        secret = ca_secret,
                        "waiting for the operator to create the CA"
                    );
                }
            }
            Err(e) => tracing::warn!(secret = ca_secret, error = %e, "reading the CA"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += Duration::from_secs(1);
    };
    let field = |key: &str| -> Result<String, AgentError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .ok_or_else(|| {
                AgentError::Config(format!(
                    "Secret {ca_secret} has no {key}; delete it and the operator makes a new CA"
                ))
            })
    };
    let host = advertised_host(advertise)?;
    let mut dns = vec![
        diffkeeper_rpc::AGENT_SERVER_NAME.to_string(),
        node.to_string(),
    ];
    let mut ips = Vec::new();
    match host.parse::<IpAddr>() {
        Ok(ip) => ips.push(ip),
        Err(_) => dns.push(host),
    }
    Ok(diffkeeper_rpc::mint_serving_identity(
        &field("ca.crt")?,
        &field("ca.key")?,
        &dns,
        &ips,
    )?)
}

/// `https://10.0.0.5:7443` → `10.0.0.5`; `https://[fd00::1]:7443` → `fd00::1`.
fn advertised_host(advertise: &str) -> Result<String, AgentError> {
    let rest = advertise.strip_prefix("https://").ok_or_else(|| {
        AgentError::Config(format!(
            "--advertise={advertise:?} must be https://HOST:PORT (the agent serves TLS only)"
        ))
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return Err(AgentError::Config(format!(
            "--advertise={advertise:?} has no host"
        )));
    }
    Ok(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::advertised_host;

    #[test]
    fn takes_the_host_of_the_advertised_endpoint() {
        assert_eq!(
            advertised_host("https://10.0.0.5:7443").unwrap(),
            "10.0.0.5"
        );
        assert_eq!(
            advertised_host("https://[fd00::1]:7443").unwrap(),
            "fd00::1"
        );
        assert_eq!(advertised_host("https://node-a:7443").unwrap(), "node-a");
        assert!(advertised_host("10.0.0.5:7443").is_err());
    }
}
