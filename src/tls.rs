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

/// The names a self-signed certificate for `host` (--host) is made for:
/// the host itself; for a loopback or every-interface address, localhost
/// and both loopback addresses instead. The first is its CN.
pub fn names_for(host: &str) -> Vec<String> {
    let local = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if local {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        vec![host.to_ascii_lowercase()]
    }
}

/// A self-signed certificate for `names` (the first its CN) made now:
/// (certificate PEM, key PEM).
fn make_self_signed(names: &[String]) -> Result<(String, String), String> {
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, names[0].as_str());
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// --tls-self-signed: the certificate for `names` kept in `dir` (the
/// state directory), made and written there the first time (the key mode
/// 0600), read back on every later start, so clients can pin it (`chat
/// --tls-ca PATH`). Returns the configuration, the fingerprint and the
/// certificate's path.
pub fn pinned(
    dir: &Path,
    names: &[String],
) -> Result<(Arc<ServerConfig>, String, std::path::PathBuf), String> {
    // One pair per name set: another --host gets its own, never a
    // certificate for the wrong name.
    let label: String = names[0]
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cert_path = dir.join(format!("tls-{label}.crt"));
    let key_path = dir.join(format!("tls-{label}.key"));
    if !cert_path.exists() && !key_path.exists() {
        let (cert, key) = make_self_signed(names)?;
        let at = |p: &Path, e: std::io::Error| {
            format!("cannot write {}: {e} (--state-dir)", p.display())
        };
        crate::config::make_state_dir(dir).map_err(|e| at(dir, e))?;
        write_new(&key_path, key.as_bytes(), 0o600).map_err(|e| at(&key_path, e))?;
        write_new(&cert_path, cert.as_bytes(), 0o644).map_err(|e| at(&cert_path, e))?;
    }
    let broken = |e: String| {
        format!(
            "{e}; remove {} and {} to make a new certificate",
            cert_path.display(),
            key_path.display()
        )
    };
    let der = CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| broken(format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| broken(format!("{}: {e}", key_path.display())))?;
    let fp = fingerprint(&der);
    Ok((
        server_config(vec![der], key).map_err(broken)?,
        fp,
        cert_path,
    ))
}

/// Writes a new file with `mode` from the start (a key is never readable
/// by others, not even for a moment): a temporary file, then a rename.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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

    #[test]
    fn a_pinned_certificate_is_for_the_host_and_made_once() {
        assert_eq!(names_for("127.0.0.1"), ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(names_for("0.0.0.0"), names_for("localhost"));
        assert_eq!(names_for("Chat.Example.org"), ["chat.example.org"]);
        let dir = std::env::temp_dir().join(format!("chatd-pinned-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = names_for("chat.example.org");
        let (_, fp, path) = pinned(&dir, &names).unwrap();
        assert_eq!(path, dir.join("tls-chat.example.org.crt"));
        let (_, again, _) = pinned(&dir, &names).unwrap();
        assert_eq!(fp, again, "read back, not made anew");
        let (_, other, _) = pinned(&dir, &names_for("localhost")).unwrap();
        assert_ne!(fp, other, "another host, another certificate");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
