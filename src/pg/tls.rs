//! TLS to PostgreSQL (rustls), as the URL's `sslmode` asks, with libpq's
//! meanings:
//!
//! - `disable`: plaintext.
//! - `prefer` (the default): TLS when the server offers it, else plaintext;
//!   `require`: TLS or no connection. Neither checks the server's
//!   certificate unless `sslrootcert` names a file of trusted certificates
//!   (then as `verify-ca`, as libpq does when it has a root certificate).
//! - `verify-ca`: TLS to a server whose certificate chains to a certificate
//!   of `sslrootcert`; `verify-full`: and names the host of the URL.
//!
//! tokio-postgres knows `disable`, `prefer` and `require` and no
//! `sslrootcert`: `parse` takes both out of the URL and builds the check.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// The connection settings of a PostgreSQL URL and the TLS its `sslmode`
/// asks for.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut rootcert) = (None, None);
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(decode(v)?),
            Some(("sslrootcert", v)) => rootcert = Some(decode(v)?),
            _ => rest.push(pair),
        }
    }
    let mode = mode.unwrap_or_else(|| "prefer".into());
    let (driver_mode, check) = match mode.as_str() {
        "disable" | "prefer" | "require" if rootcert.is_none() => (mode.as_str(), Check::None),
        "disable" | "prefer" | "require" => (mode.as_str(), Check::Chain),
        "verify-ca" => ("require", Check::Chain),
        "verify-full" => ("require", Check::Name),
        other => {
            return Err(Error::invalid(format!(
                "--store: sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                 verify-full"
            )))
        }
    };
    if check != Check::None && rootcert.is_none() {
        return Err(Error::invalid(format!(
            "--store: sslmode={mode} needs sslrootcert=<file of trusted certificates (PEM)>"
        )));
    }
    rest.push(match driver_mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let config: tokio_postgres::Config = format!("{base}?{}", rest.join("&"))
        .parse()
        .map_err(|e| Error::invalid(format!("--store: not a PostgreSQL URL: {e}")))?;
    let tls = connector(check, rootcert.as_deref())?;
    Ok((config, tls))
}

/// A URL query value, percent-decoded.
fn decode(v: &str) -> Result<String> {
    let bad = || Error::invalid(format!("--store: a malformed URL parameter value: {v:?}"));
    let mut out = Vec::with_capacity(v.len());
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
        let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
        out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// What is checked of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    /// It chains to a trusted certificate.
    Chain,
    /// And it names the host.
    Name,
}

fn connector(check: Check, rootcert: Option<&str>) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let trusted = match rootcert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::invalid(format!("--store: sslrootcert={path}: {e}")))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::invalid(format!("--store: sslrootcert={path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::invalid(format!(
                    "--store: sslrootcert={path} holds no certificate"
                )));
            }
            let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| Error::invalid(format!("--store: sslrootcert={path}: {e}")))?;
            Some(v)
        }
        None => None,
    };
    let verifier = Verifier {
        trusted,
        check,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS to PostgreSQL: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The check of `sslmode`: none, the chain, or the chain and the name. The
/// handshake's signatures are always verified.
#[derive(Debug)]
struct Verifier {
    trusted: Option<Arc<WebPkiServerVerifier>>,
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(trusted) = self.trusted.as_ref().filter(|_| self.check != Check::None) else {
            return Ok(ServerCertVerified::assertion());
        };
        match trusted.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        use tokio_postgres::config::SslMode;
        let (c, _) = parse("postgres://u@h:5/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
        assert_eq!(c.get_application_name(), Some("x"));
        let (c, _) = parse("postgres://u@h/db").unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Prefer);
        let refused = |url: &str| match parse(url) {
            Ok(_) => panic!("{url} parsed"),
            Err(e) => e.to_string(),
        };
        for mode in ["verify-ca", "verify-full"] {
            let e = refused(&format!("postgres://h/db?sslmode={mode}"));
            assert!(e.contains("sslrootcert"), "{e}");
        }
        let e = refused("postgres://h/db?sslmode=verify-full&sslrootcert=%2Fno%2Fsuch.pem");
        assert!(e.contains("/no/such.pem"), "{e}");
        assert!(refused("postgres://h/db?sslmode=allow-ish").contains("allow-ish"));
    }
}
