//! TLS for the custom-metrics server and the front-proxy check. The serving certificate comes
//! from files or is generated at start (the APIService then needs `insecureSkipTLSVerify` or the
//! certificate as `caBundle`). A client must present a certificate the requestheader CA signed
//! (kube-apiserver's front proxy always does, for its proxied requests and its availability
//! checks), or the handshake fails: nobody else gets as far as an HTTP request, let alone a
//! TLS session held open.

use std::{path::Path, sync::Arc};

use kube::{Api, Client};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Where kube-apiserver publishes the front proxy's CA and names (kube-system).
pub const AUTHENTICATION_CONFIG_MAP: &str = "extension-apiserver-authentication";
const CA_KEY: &str = "requestheader-client-ca-file";
const ALLOWED_NAMES_KEY: &str = "requestheader-allowed-names";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{what}: no PEM {kind} found")]
    NoPem { what: String, kind: &'static str },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("--tls-cert-file and --tls-key-file go together; only {given} was given")]
    HalfAPair { given: &'static str },
    #[error("reading kube-system/{AUTHENTICATION_CONFIG_MAP} (the requestheader CA): {0}")]
    ConfigMap(#[source] kube::Error),
    #[error(
        "kube-system/{AUTHENTICATION_CONFIG_MAP} has no {CA_KEY}: is kube-apiserver run with --requestheader-client-ca-file?"
    )]
    NoRequestHeaderCa,
}

/// Who may call: certificates chaining to `ca_pem`, and when `allowed_names` is not empty, only
/// those whose subject common name is listed (kube-apiserver's `--requestheader-allowed-names`).
#[derive(Debug, Clone)]
pub struct FrontProxyTrust {
    pub ca_pem: Vec<u8>,
    pub allowed_names: Vec<String>,
    /// Where the CA came from, for messages.
    pub source: String,
}

impl FrontProxyTrust {
    pub fn from_file(path: &Path, allowed_names: Vec<String>) -> Result<Self, TlsError> {
        Ok(Self {
            ca_pem: read(path)?,
            allowed_names,
            source: path.display().to_string(),
        })
    }

    /// As aggregated API servers do: the CA and allowed names kube-apiserver publishes.
    pub async fn from_cluster(client: &Client) -> Result<Self, TlsError> {
        let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "kube-system");
        let config_map = config_maps
            .get(AUTHENTICATION_CONFIG_MAP)
            .await
            .map_err(TlsError::ConfigMap)?;
        let data = config_map.data.unwrap_or_default();
        let ca_pem = data
            .get(CA_KEY)
            .ok_or(TlsError::NoRequestHeaderCa)?
            .clone()
            .into_bytes();
        let source = format!("kube-system/{AUTHENTICATION_CONFIG_MAP}");
        // The names are a JSON list of strings; an empty or absent list allows any name.
        let allowed_names = match data.get(ALLOWED_NAMES_KEY).map(|s| s.trim()) {
            None | Some("") => Vec::new(),
            Some(text) => serde_json::from_str(text).map_err(|e| TlsError::Invalid {
                what: format!("{source} {ALLOWED_NAMES_KEY}"),
                message: e.to_string(),
            })?,
        };
        Ok(Self {
            ca_pem,
            allowed_names,
            source,
        })
    }

    /// Whether a certificate that already chained to the CA may speak for users.
    pub fn name_allowed(&self, common_name: Option<&str>) -> bool {
        self.allowed_names.is_empty() || common_name.is_some_and(|cn| self.allowed_names.iter().any(|n| n == cn))
    }
}

/// The serving certificate chain and key, from files or generated for `localhost` and the
/// names the aggregator may dial.
pub fn serving_identity(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => {
            let what = cert_file.display().to_string();
            let chain = CertificateDer::pem_slice_iter(&read(cert_file)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Invalid {
                    what: what.clone(),
                    message: e.to_string(),
                })?;
            if chain.is_empty() {
                return Err(TlsError::NoPem {
                    what,
                    kind: "certificate",
                });
            }
            let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| TlsError::Invalid {
                what: key_file.display().to_string(),
                message: e.to_string(),
            })?;
            Ok((chain, key))
        }
        (None, None) => {
            let names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "model-operator-custom-metrics".to_owned(),
            ];
            let generated = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Invalid {
                what: "the self-generated serving certificate".to_owned(),
                message: e.to_string(),
            })?;
            let key =
                PrivateKeyDer::try_from(generated.signing_key.serialize_der()).map_err(|e| TlsError::Invalid {
                    what: "the self-generated serving key".to_owned(),
                    message: e.to_string(),
                })?;
            Ok((vec![generated.cert.der().clone()], key))
        }
        (Some(_), None) => Err(TlsError::HalfAPair {
            given: "--tls-cert-file",
        }),
        (None, Some(_)) => Err(TlsError::HalfAPair {
            given: "--tls-key-file",
        }),
    }
}

/// A rustls server that asks for (but does not require) a client certificate signed by the
/// front proxy's CA, offering HTTP/2 and HTTP/1.1.
pub fn server_config(
    identity: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    trust: &FrontProxyTrust,
) -> Result<Arc<ServerConfig>, TlsError> {
    let invalid = |what: &str, message: String| TlsError::Invalid {
        what: what.to_owned(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&trust.ca_pem) {
        let certificate = certificate.map_err(|e| invalid(&trust.source, e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| invalid(&trust.source, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoPem {
            what: trust.source.clone(),
            kind: "CA certificate",
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid(&trust.source, e.to_string()))?;
    let (chain, key) = identity;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS protocol versions", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("the serving certificate", e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate.
pub fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(certificate.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(name)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_serves_and_names_itself() {
        let identity = serving_identity(None, None).unwrap();
        assert_eq!(common_name(&identity.0[0]).as_deref(), Some("rcgen self signed cert"));
        let ca = rcgen::generate_simple_self_signed(vec!["front-proxy-ca".to_owned()]).unwrap();
        let trust = FrontProxyTrust {
            ca_pem: ca.cert.pem().into_bytes(),
            allowed_names: vec![],
            source: "test".into(),
        };
        let config = server_config(identity, &trust).unwrap();
        assert_eq!(config.alpn_protocols[1], b"http/1.1");
    }

    #[test]
    fn bad_inputs_name_the_file_or_flag() {
        let missing = serving_identity(Some(Path::new("/nonexistent/tls.crt")), Some(Path::new("/x"))).unwrap_err();
        assert!(
            missing.to_string().starts_with("reading /nonexistent/tls.crt:"),
            "{missing}"
        );
        let half = serving_identity(None, Some(Path::new("/x"))).unwrap_err();
        assert_eq!(
            half.to_string(),
            "--tls-cert-file and --tls-key-file go together; only --tls-key-file was given"
        );
        let trust = FrontProxyTrust {
            ca_pem: b"not a certificate".to_vec(),
            allowed_names: vec![],
            source: "ca.crt".into(),
        };
        let error = server_config(serving_identity(None, None).unwrap(), &trust).unwrap_err();
        assert_eq!(error.to_string(), "ca.crt: no PEM CA certificate found");
    }

    #[test]
    fn allowed_names_restrict_only_when_given() {
        let mut trust = FrontProxyTrust {
            ca_pem: vec![],
            allowed_names: vec![],
            source: String::new(),
        };
        assert!(trust.name_allowed(None));
        trust.allowed_names = vec!["front-proxy-client".into()];
        assert!(trust.name_allowed(Some("front-proxy-client")));
        assert!(!trust.name_allowed(Some("admin")));
        assert!(!trust.name_allowed(None));
    }
}
