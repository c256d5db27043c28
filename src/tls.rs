//! TLS set-up: the server's certificate (from PEM files, or made at
//! start-up), and the `chat` client's trust (system roots, a CA file, or
//! none). The per-connection layer is conn/tls.rs.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration from a certificate chain and its key.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    // Resumption tickets would keep per-client state on the server (the
    // session cache) for nothing a chat needs: a reconnect pays one more
    // handshake instead.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // One browser route (http/1.1) on the web port; line clients ask for none.
    cfg.alpn_protocols = Vec::new();
    Ok(Arc::new(cfg))
}

/// Reads `--tls-cert` and `--tls-key`.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    server_config(certs, key)
}

/// A certificate for `localhost`, 127.0.0.1 and ::1 made now, with its
/// SHA-256 fingerprint (colon-separated hex, as `openssl x509 -fingerprint
/// -sha256` prints it), and the certificate in PEM for clients to trust.
pub fn self_signed() -> Result<(Arc<ServerConfig>, String, String), String> {
    let names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    let der = made.cert.der().clone();
    let fp = fingerprint(&der);
    let pem = made.cert.pem();
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())?;
    Ok((server_config(vec![der], key)?, fp, pem))
}

/// SHA-256 of a certificate, `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the `chat` client trusts.
pub enum Trust<'a> {
    /// The operating system's roots (rustls-native-certs).
    System,
    /// Only the certificates in this PEM file (a private CA, or the
    /// server's own self-signed certificate).
    Ca(&'a Path),
    /// Anything: encryption without knowing who answers (--insecure).
    Anyone,
}

/// The client's TLS configuration.
pub fn client_config(trust: Trust) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    let cfg = match trust {
        Trust::Anyone => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth(),
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no system root certificates found (use --tls-ca)".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Ca(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("--tls-ca {}: no certificate in it", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(cfg))
}

/// The server name to verify, from the host the client dials.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .map_err(|e| format!("{host}: not a name TLS can verify: {e}"))
}

/// --insecure: accepts any certificate (signatures are still checked, so
/// the handshake is real; only who signed is not).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_has_a_fingerprint() {
        let (_, fp, pem) = self_signed().unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
