//! Throwaway credentials for one test cluster: a CA, the API server's serving certificate, the
//! service-account signing key and an admin bearer token.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::Rng;
use rand::distr::Alphanumeric;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Files written by [`write`], all inside the cluster's temporary directory.
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) ca_cert: PathBuf,
    pub(crate) serving_cert: PathBuf,
    pub(crate) serving_key: PathBuf,
    pub(crate) sa_public_key: PathBuf,
    pub(crate) sa_signing_key: PathBuf,
    pub(crate) token_file: PathBuf,
    pub(crate) admin_token: String,
}

/// Names the serving certificate covers: loopback for the tests, plus the in-cluster names and
/// the first service IP so pods of the network-namespace tier can reach it as `kubernetes`, plus
/// `extra` (the address it advertises to pods).
fn serving_names(first_service_ip: &str, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        first_service_ip,
    ]
    .map(String::from)
    .to_vec();
    names.extend(extra.iter().cloned());
    names
}

/// A fresh CA and a serving certificate it signed, as PEM: what a test needs to serve TLS that
/// a client (the API server calling a webhook, a sidecar) verifies.
#[derive(Debug, Clone)]
pub struct ServingPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServingPki {
    /// A CA named `lanemesh-test-ca` and a certificate for `names` (DNS names or IP addresses)
    /// with common name `common_name`.
    pub fn new(names: &[String], common_name: &str) -> Result<Self> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lanemesh-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).context("signing the CA")?;
        let ca = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().context("generating the serving key")?;
        let mut serving_params = CertificateParams::new(names.to_vec())?;
        serving_params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        serving_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving_params.use_authority_key_identifier_extension = true;
        let serving_cert = serving_params
            .signed_by(&serving_key, &ca)
            .context("signing the serving certificate")?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: serving_cert.pem(),
            key_pem: serving_key.serialize_pem(),
        })
    }
}

pub(crate) fn write(dir: &Path, first_service_ip: &str, extra_names: &[String]) -> Result<Pki> {
    let serving = ServingPki::new(
        &serving_names(first_service_ip, extra_names),
        "kube-apiserver",
    )?;

    // ECDSA P-256 (rcgen's default) is accepted by kube-apiserver and signs tokens as ES256.
    let sa_key = KeyPair::generate().context("generating the service-account key")?;

    let admin_token: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_public_key: dir.join("sa.pub"),
        sa_signing_key: dir.join("sa.key"),
        token_file: dir.join("tokens.csv"),
        admin_token,
    };
    write_file(&pki.ca_cert, &serving.ca_pem)?;
    write_file(&pki.serving_cert, &serving.cert_pem)?;
    write_file(&pki.serving_key, &serving.key_pem)?;
    write_file(&pki.sa_public_key, &sa_key.public_key_pem())?;
    write_file(&pki.sa_signing_key, &sa_key.serialize_pem())?;
    // token,user,uid,"group1,group2" — system:masters bypasses RBAC entirely.
    write_file(
        &pki.token_file,
        &format!(
            "{},lanemesh-admin,lanemesh-admin,\"system:masters\"\n",
            pki.admin_token
        ),
    )?;
    Ok(pki)
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
