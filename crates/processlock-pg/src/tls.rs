//! `sslmode` and `sslrootcert` as libpq reads them, over rustls (with the `tls` feature).
//!
//! | sslmode | encrypted | server certificate |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (default) | when the server offers it (with `tls`) | not checked |
//! | `require` | yes | not checked |
//! | `verify-ca` | yes | signed by a trusted CA |
//! | `verify-full` | yes | signed by a trusted CA, and names the host |
//!
//! Trusted CAs: the PEM file `sslrootcert` names, or the system's (`sslrootcert=system`, or no
//! `sslrootcert`). `sslrootcert=system` without `sslmode` means `verify-full`, as in libpq. The
//! client itself (tokio-postgres) knows only disable/prefer/require, so the mode is kept here
//! and the client is told the nearest one it knows.

use std::path::PathBuf;

use tokio_postgres::config::SslMode;

use crate::conninfo::Params;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    /// What the client is told: it encrypts for `require` and above; the certificate checks
    /// are the connector's.
    pub fn for_client(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub mode: Mode,
    /// `None`: the system's trusted CAs.
    pub root_cert: Option<PathBuf>,
}

impl TlsParams {
    /// `sslmode` and `sslrootcert`, from wherever the parameters came.
    pub fn from(params: &Params) -> Result<TlsParams> {
        let system = params.get("sslrootcert") == Some("system");
        let mode = match params.get("sslmode") {
            None if system => Mode::VerifyFull,
            None => Mode::Prefer,
            Some("disable") => Mode::Disable,
            Some("allow" | "prefer") => Mode::Prefer,
            Some("require") => Mode::Require,
            Some("verify-ca") => Mode::VerifyCa,
            Some("verify-full") => Mode::VerifyFull,
            Some(_) => {
                return Err(Error::invalid(
                    "url",
                    format!(
                        "{}: use disable, prefer, require, verify-ca or verify-full",
                        params.shown("sslmode")
                    ),
                ))
            }
        };
        let root_cert = params
            .get("sslrootcert")
            .filter(|_| !system)
            .map(PathBuf::from);
        Ok(TlsParams { mode, root_cert })
    }
}

/// A connector for one more connection (`NoTls` is `Copy`, the rustls connector is not).
#[allow(clippy::clone_on_copy)]
pub(crate) fn another(c: &Connector) -> Connector {
    c.clone()
}

#[cfg(not(feature = "tls"))]
pub(crate) type Connector = tokio_postgres::NoTls;

/// Without the `tls` feature only `disable` and `prefer` (which then never encrypts) work.
#[cfg(not(feature = "tls"))]
pub(crate) fn connector(params: &TlsParams) -> Result<Connector> {
    match params.mode {
        Mode::Disable | Mode::Prefer => Ok(tokio_postgres::NoTls),
        _ => Err(Error::invalid(
            "url",
            "this build has no TLS (the processlock-pg `tls` feature); use sslmode=disable or prefer on a trusted network",
        )),
    }
}

#[cfg(feature = "tls")]
pub(crate) type Connector = tokio_postgres_rustls::MakeRustlsConnect;

#[cfg(feature = "tls")]
pub(crate) fn connector(params: &TlsParams) -> Result<Connector> {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::ClientConfig;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("url", format!("TLS: {e}")))?;
    let config = match params.mode {
        Mode::Disable | Mode::Prefer | Mode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::Unchecked(provider)))
            .with_no_client_auth(),
        Mode::VerifyCa | Mode::VerifyFull => {
            let roots = Arc::new(verify::roots(params.root_cert.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::invalid("sslrootcert", format!("{e}")))?;
            if params.mode == Mode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verify::ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(feature = "tls")]
mod verify {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

    use crate::error::{Error, Result};

    type Verified = std::result::Result<ServerCertVerified, rustls::Error>;
    type SignatureValid = std::result::Result<HandshakeSignatureValid, rustls::Error>;

    pub fn roots(file: Option<&Path>) -> Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        match file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        Error::invalid("sslrootcert", format!("{}: {e}", path.display()))
                    })?;
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(Error::invalid(
                        "sslrootcert",
                        format!("{}: no usable CA certificate", path.display()),
                    ));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
                if store.is_empty() {
                    return Err(Error::invalid(
                        "sslrootcert",
                        "the system has no trusted CA certificates; name a CA file with sslrootcert",
                    ));
                }
            }
        }
        Ok(store)
    }

    /// `prefer` and `require`: encrypted, the certificate unchecked (as libpq does). The
    /// handshake's signatures are still verified, so the session is bound to the key presented.
    #[derive(Debug)]
    pub struct Unchecked(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for Unchecked {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Verified {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> SignatureValid {
            verify_tls12_signature(
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
            dss: &DigitallySignedStruct,
        ) -> SignatureValid {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate may differ.
    #[derive(Debug)]
    pub struct ChainOnly(pub Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Verified {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> SignatureValid {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> SignatureValid {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(url: &str) -> Result<TlsParams> {
        TlsParams::from(&Params::gather(url, &|_| None)?)
    }

    #[test]
    fn tls_parameters_are_read_from_the_connection_string() {
        let p = tls(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::VerifyFull);
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let p = tls("postgres://u@h/db?sslrootcert=system&sslmode=disable").unwrap();
        assert_eq!((p.mode, p.root_cert), (Mode::Disable, None));
        // As in libpq: the system's CAs without a mode mean verify-full.
        assert_eq!(
            tls("postgres://u@h/db?sslrootcert=system").unwrap().mode,
            Mode::VerifyFull
        );
        assert_eq!(tls("host=h user=u").unwrap().mode, Mode::Prefer);
        assert_eq!(
            tls("host=h user=u sslmode=verify-ca").unwrap().mode,
            Mode::VerifyCa
        );
        assert!(tls("postgres://u@h/db?sslmode=sometimes").is_err());
        assert!(tls("postgres://u@h/db?sslrootcert=%zz").is_err());
    }
}
