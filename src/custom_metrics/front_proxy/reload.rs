//! Certificates change while the operator runs: cert-manager renews the serving certificate in
//! its Secret's files, and a cluster may rotate its front-proxy CA in
//! `kube-system/extension-apiserver-authentication`. Every interval the server reads both again
//! and, when either changed, serves new connections with a new TLS configuration. A file that
//! is half-written or broken is reported and the previous configuration kept, so a bad renewal
//! never takes the metrics API down.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock, RwLockReadGuard},
    time::Duration,
};

use kube::Client;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::tls::{self, FrontProxyTrust, TlsError};

/// Where the serving certificate comes from.
#[derive(Clone)]
pub enum IdentitySource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generated once at start; it never changes.
    Generated(Arc<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>),
}

/// Where the front proxy's CA comes from.
#[derive(Clone)]
pub enum TrustSource {
    File { ca: PathBuf, allowed_names: Vec<String> },
    Cluster(Client),
}

/// The TLS configuration connections are accepted with now, and the trust requests are
/// checked against; both replaced together on a change.
pub struct LiveTls {
    identity: IdentitySource,
    trust_source: TrustSource,
    current: RwLock<Current>,
}

/// What is in use, swapped as one.
struct Current {
    acceptor: TlsAcceptor,
    trust: Arc<FrontProxyTrust>,
    /// Of the certificate, key, CA and names, to tell a change from a re-read.
    fingerprint: [u8; 32],
}

impl Current {
    fn build((chain, key, trust): Loaded, fingerprint: [u8; 32]) -> Result<Self, TlsError> {
        Ok(Self {
            acceptor: TlsAcceptor::from(tls::server_config((chain, key), &trust)?),
            trust: Arc::new(trust),
            fingerprint,
        })
    }
}

impl LiveTls {
    /// Loads everything once; any problem here stops the operator with the file's name.
    pub async fn load(identity: IdentitySource, trust_source: TrustSource) -> Result<Self, TlsError> {
        let loaded = read_sources(&identity, &trust_source).await?;
        let first = fingerprint(&loaded);
        let current = Current::build(loaded, first)?;
        Ok(Self {
            identity,
            trust_source,
            current: RwLock::new(current),
        })
    }

    fn current(&self) -> RwLockReadGuard<'_, Current> {
        self.current.read().expect("never poisoned: no panics while held")
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current().acceptor.clone()
    }

    pub fn trust(&self) -> Arc<FrontProxyTrust> {
        self.current().trust.clone()
    }

    /// Reads the sources again and swaps in a new configuration if they changed. Returns
    /// whether it did; an error leaves the current configuration serving.
    pub async fn reload(&self) -> Result<bool, TlsError> {
        let loaded = read_sources(&self.identity, &self.trust_source).await?;
        let changed = fingerprint(&loaded);
        if changed == self.current().fingerprint {
            return Ok(false);
        }
        let current = Current::build(loaded, changed)?;
        info!(requestheader_ca = %current.trust.source, allowed_names = ?current.trust.allowed_names, "custom metrics TLS reloaded: new connections use the new certificate or CA");
        *self.current.write().expect("never poisoned: no panics while held") = current;
        Ok(true)
    }

    /// Reloads every `interval` until dropped (the server's task owns it).
    pub async fn reload_every(self: Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(error) = self.reload().await {
                warn!(%error, "custom metrics TLS not reloaded; the current certificate and CA stay in use");
            }
        }
    }
}

type Loaded = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, FrontProxyTrust);

async fn read_sources(identity: &IdentitySource, trust: &TrustSource) -> Result<Loaded, TlsError> {
    let (chain, key) = match identity {
        IdentitySource::Files { cert, key } => tls::serving_identity(Some(cert), Some(key))?,
        IdentitySource::Generated(generated) => (generated.0.clone(), generated.1.clone_key()),
    };
    let trust = match trust {
        TrustSource::File { ca, allowed_names } => FrontProxyTrust::from_file(ca, allowed_names.clone())?,
        TrustSource::Cluster(client) => FrontProxyTrust::from_cluster(client).await?,
    };
    Ok((chain, key, trust))
}

fn fingerprint((chain, key, trust): &Loaded) -> [u8; 32] {
    let mut hash = Sha256::new();
    for certificate in chain {
        hash.update(certificate.as_ref());
    }
    hash.update(key.secret_der());
    hash.update(&trust.ca_pem);
    for name in &trust.allowed_names {
        hash.update(name.as_bytes());
        hash.update([0]);
    }
    hash.finalize().into()
}

/// A live configuration with a self-generated serving certificate and a throwaway front-proxy
/// CA, for tests of what sits behind the TLS layer.
#[cfg(test)]
pub async fn for_tests(allowed_names: Vec<String>) -> Arc<LiveTls> {
    let ca = rcgen::generate_simple_self_signed(vec!["front-proxy-ca".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("front-proxy-ca.crt");
    std::fs::write(&path, ca.cert.pem()).unwrap();
    let identity = IdentitySource::Generated(Arc::new(tls::serving_identity(None, None).unwrap()));
    let trust = TrustSource::File {
        ca: path,
        allowed_names,
    };
    Arc::new(LiveTls::load(identity, trust).await.unwrap())
}

/// A front-proxy CA and a client certificate it signed, as a test's API server would hold them.
#[cfg(test)]
pub struct TestFrontProxy {
    pub ca_pem: String,
    /// The client's certificate and key, PEM.
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

#[cfg(test)]
impl TestFrontProxy {
    pub fn new(client_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test-front-proxy-ca");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params.distinguished_name.push(DnType::CommonName, client_name);
        let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// A client configuration that presents the client certificate and trusts `server`.
    pub fn client_config(&self, server: &CertificateDer<'static>) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.clone()).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(self.client_cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.client_key_pem.as_bytes()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A self-signed certificate for `name` and its key, as PEM files in `dir`.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        write_pair_for(dir, vec![name.to_owned()]).0
    }

    /// The same for several names; also returns the certificate, for a client to trust.
    fn write_pair_for(dir: &Path, names: Vec<String>) -> ((PathBuf, PathBuf), CertificateDer<'static>) {
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        // Written beside and renamed over, as the kubelet updates a mounted Secret.
        std::fs::write(dir.join("tls.crt.new"), generated.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key.new"), generated.signing_key.serialize_pem()).unwrap();
        std::fs::rename(dir.join("tls.crt.new"), &cert).unwrap();
        std::fs::rename(dir.join("tls.key.new"), &key).unwrap();
        ((cert, key), generated.cert.der().clone())
    }

    /// Whether a client that trusts only `trusted`, presenting the front proxy's certificate,
    /// completes a handshake with a connection accepted by `live` now.
    async fn handshake_trusting(live: &LiveTls, proxy: &TestFrontProxy, trusted: &CertificateDer<'static>) -> bool {
        let config = proxy.client_config(trusted);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = live.acceptor();
        let server = tokio::spawn(async move { acceptor.accept(server_io).await.is_ok() });
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        // The client's stream stays open until the server has finished: it still writes (its
        // session tickets) after the client's last handshake message.
        let client = connector.connect(name, client_io).await;
        let server = server.await.unwrap();
        client.is_ok() && server
    }

    #[tokio::test]
    async fn new_connections_are_served_the_renewed_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ((cert, key), first) = write_pair_for(dir.path(), vec!["localhost".to_owned()]);
        let proxy = TestFrontProxy::new("front-proxy-client");
        let ca = dir.path().join("front-proxy-ca.crt");
        std::fs::write(&ca, &proxy.ca_pem).unwrap();
        let live = LiveTls::load(
            IdentitySource::Files { cert, key },
            TrustSource::File {
                ca,
                allowed_names: vec![],
            },
        )
        .await
        .unwrap();
        assert!(
            handshake_trusting(&live, &proxy, &first).await,
            "the first certificate serves"
        );

        let (_, second) = write_pair_for(dir.path(), vec!["localhost".to_owned()]);
        assert!(
            !handshake_trusting(&live, &proxy, &second).await,
            "not read again yet: the first one still serves"
        );
        assert!(live.reload().await.unwrap());
        assert!(
            handshake_trusting(&live, &proxy, &second).await,
            "the renewed certificate serves"
        );
        assert!(
            !handshake_trusting(&live, &proxy, &first).await,
            "the old one no longer does"
        );
        // A client with a certificate from another CA gets no session at all.
        let stranger = TestFrontProxy::new("front-proxy-client");
        assert!(!handshake_trusting(&live, &stranger, &second).await);
    }

    fn write_ca(dir: &Path) -> PathBuf {
        let ca = rcgen::generate_simple_self_signed(vec!["front-proxy-ca".to_owned()]).unwrap();
        let path = dir.join("ca.crt");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        path
    }

    #[tokio::test]
    async fn a_renewed_certificate_or_ca_is_swapped_in_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "first");
        let ca = write_ca(dir.path());
        let live = LiveTls::load(
            IdentitySource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            TrustSource::File {
                ca: ca.clone(),
                allowed_names: vec![],
            },
        )
        .await
        .unwrap();
        assert!(!live.reload().await.unwrap(), "nothing changed");

        write_pair(dir.path(), "second");
        assert!(live.reload().await.unwrap(), "a renewed certificate is taken");
        assert!(!live.reload().await.unwrap());

        let old_ca = live.trust().ca_pem.clone();
        write_ca(dir.path());
        assert!(live.reload().await.unwrap(), "a rotated CA is taken");
        assert_ne!(live.trust().ca_pem, old_ca);

        // A half-written renewal: the error names the file and the configuration stays.
        let trust_before = live.trust().ca_pem.clone();
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
        let error = live.reload().await.unwrap_err().to_string();
        assert!(error.contains("tls.crt"), "{error}");
        assert_eq!(live.trust().ca_pem, trust_before);
        write_pair(dir.path(), "third");
        std::fs::remove_file(&ca).unwrap();
        let error = live.reload().await.unwrap_err().to_string();
        assert!(error.contains("ca.crt"), "{error}");
    }
}
