//! The agent's serving certificate, minted at start from the install's CA.

use crate::{RpcError, AGENT_SERVER_NAME};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::time::Duration;

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A year: the agent mints a new certificate at every start, so this only bounds how long a
/// leaked key stays useful. An agent that runs longer must be restarted to renew it.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Nodes' clocks drift; a certificate valid from "now" on the agent may be "future" to a client.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Mints the agent's serving certificate from the CA (PEM cert + PEM key, as in Secret
/// diffkeeper-ca), valid for `dns_names` and `ips` and always for [`AGENT_SERVER_NAME`].
pub fn mint_serving_identity(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<TlsIdentity, RpcError> {
    let cert_err = |what| move |source| RpcError::Certificate { what, source };
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(cert_err("read the CA's private key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(cert_err("read the CA certificate"))?;

    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, AGENT_SERVER_NAME);
    let mut names: Vec<&str> = vec![AGENT_SERVER_NAME];
    names.extend(dns_names.iter().map(String::as_str));
    names.dedup();
    for name in names {
        let dns = name
            .try_into()
            .map_err(cert_err("use a DNS name in the serving certificate"))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params
        .subject_alt_names
        .extend(ips.iter().copied().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;

    let key = KeyPair::generate().map_err(cert_err("generate the serving key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("sign the serving certificate"))?;
    Ok(TlsIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
