//! TLS client configuration: rustls with the ring provider, webpki roots plus custom CAs.

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use outlast_core::ConfigError;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The largest CA file read: a bundle of every public root is about 250 KiB, so 1 MiB is
/// generous while a mistaken path (`/dev/zero`, a log file) fails at once instead of filling
/// memory.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a PEM file of CA certificates, at most [`MAX_CA_FILE_BYTES`]; errors name `param`.
/// Only regular files are read: a FIFO or a device could block or never end.
pub(crate) fn read_ca_file(param: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let cannot =
        |e: std::io::Error| ConfigError::invalid(param, format!("cannot read {path:?}: {e}"));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(ConfigError::invalid(
            param,
            format!("{path:?} is not a regular file (a PEM file of CA certificates is expected)"),
        ));
    }
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut pem))
        .map_err(cannot)?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(ConfigError::invalid(
            param,
            format!(
                "{path:?} is larger than {MAX_CA_FILE_BYTES} bytes: not a CA bundle (a bundle of every public root is about 250 KiB)"
            ),
        ));
    }
    Ok(pem)
}

/// Parses every certificate in PEM text; errors name `param`.
pub(crate) fn parse_pem_certs(
    param: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert =
            cert.map_err(|e| ConfigError::invalid(param, format!("invalid PEM certificate: {e}")))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            param,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    Ok(certs)
}

/// The client configuration: certificate verification always on, trusting the Mozilla roots
/// from `webpki-roots` plus `extra_roots`.
pub(crate) fn client_config(
    param: &'static str,
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(|e| {
            ConfigError::invalid(param, format!("certificate is not a usable CA: {e}"))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(param, format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_certificates_is_rejected_naming_the_parameter() {
        let e = parse_pem_certs("ca_pem", b"not a certificate").expect_err("no cert");
        assert!(e.to_string().contains("ca_pem"), "{e}");
    }

    #[test]
    fn default_config_builds_with_webpki_roots() {
        client_config("ca_pem", &[]).expect("default TLS config");
    }
}
