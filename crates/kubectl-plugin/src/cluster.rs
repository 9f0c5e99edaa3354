//! The cluster connection as kubectl makes it: the kubeconfig (`--kubeconfig`, else `KUBECONFIG`,
//! else ~/.kube/config), `--context`, and the namespace (`-n`, else the context's), plus the
//! bearer token the agent will be shown.

use std::path::PathBuf;

use anyhow::{bail, Context};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// kubectl's connection flags; global so they go before or after the subcommand, as with kubectl.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file to use (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE", display_order = 900)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME", display_order = 901)]
    context: Option<String>,
    /// The namespace (default: the context's namespace, else "default").
    #[arg(
        short = 'n',
        long,
        global = true,
        value_name = "NAMESPACE",
        display_order = 902
    )]
    namespace: Option<String>,
}

/// A client for the cluster, the namespace the command is about, and the kubeconfig's settings
/// (the agent is shown the same user's token).
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub config: Config,
}

impl ClusterArgs {
    pub async fn connect(&self) -> anyhow::Result<Cluster> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .context(
            "loading the kubeconfig (set --kubeconfig or KUBECONFIG, or check --context names \
             a context in it)",
        )?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config.clone())
            .context("making a Kubernetes client from the kubeconfig")?;
        Ok(Cluster {
            client,
            namespace,
            config,
        })
    }
}

/// The bearer token the kubeconfig's user sends to the API server, found through kube's own
/// authentication machinery, so exec plugins, auth providers and token files all work: the
/// header that machinery would put on a request is the token.
pub async fn kubeconfig_token(config: &Config) -> anyhow::Result<String> {
    use kube::client::ConfigExt;
    use tower::{Layer, Service, ServiceExt};

    let layer = config
        .auth_layer()
        .context("getting credentials from the kubeconfig user")?;
    let Some(layer) = layer else {
        let how = if config.auth_info.client_certificate.is_some()
            || config.auth_info.client_certificate_data.is_some()
        {
            "authenticates with a client certificate"
        } else {
            "has no credentials"
        };
        bail!(
            "your kubeconfig user {how}, but the agent accepts only bearer tokens (it checks them \
             with the API server; a certificate ends at the API server). Pass a token with \
             --token or --token-file, e.g. `--token=$(kubectl create token SERVICEACCOUNT -n \
             NAMESPACE)` for a ServiceAccount allowed to read recordings"
        );
    };
    // A stand-in for the API server: it answers with the Authorization header it was sent.
    let capture = tower::service_fn(|request: http::Request<kube::client::Body>| async move {
        let header = request.headers().get(http::header::AUTHORIZATION).cloned();
        Ok::<_, tower::BoxError>(http::Response::new(header))
    });
    let mut service = layer.layer(capture);
    let header = service
        .ready()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("getting a token from the kubeconfig user")?
        .call(http::Request::new(kube::client::Body::empty()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("getting a token from the kubeconfig user (exec plugin or auth provider)")?;
    let value = header
        .body()
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    match value.strip_prefix("Bearer ") {
        Some(token) if !token.trim().is_empty() => Ok(token.trim().to_string()),
        _ => bail!(
            "your kubeconfig user signs in with a user name and password, but the agent accepts \
             only bearer tokens: pass one with --token or --token-file"
        ),
    }
}
