//! `cairn cert`: the certificates of a secure cluster, laid out as `cairn server
//! --certs-dir` and the client commands read them (the layout of `cockroach cert`).

use anyhow::{Context, bail};
use cairn_proto::tls::{CA_CERT, CA_KEY, NODE_CERT, NODE_KEY, NODE_NAME, client_cert, client_key};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `cairn cert …`.
#[derive(Args, Debug)]
pub(crate) struct CertArgs {
    #[command(subcommand)]
    cmd: CertCmd,
}

// The variants are the subcommands' names (`create-ca`, like `cockroach cert`).
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
enum CertCmd {
    /// Create the cluster's CA: `ca.crt` (every node and client needs it) and its key.
    CreateCa {
        /// Where the CA's key goes (default: `ca.key` in --certs-dir). Nodes do not need it:
        /// keep it where certificates are made.
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        lifetime_days: i64,
        /// Replace files that exist (every certificate the old CA signed stops working).
        #[arg(long)]
        overwrite: bool,
    },
    /// Create `node.crt` and `node.key` for a node reachable at HOST... (names and IP
    /// addresses that peers and clients dial; a name not listed fails verification).
    CreateNode {
        /// Names and addresses of the node, e.g. `127.0.0.1 localhost node1.example.com`.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// The CA's key (default: `ca.key` in --certs-dir).
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 1825)]
        lifetime_days: i64,
        /// Replace files that exist.
        #[arg(long)]
        overwrite: bool,
    },
    /// Create `client.USER.crt` and `client.USER.key`; `root`'s certificate is admin.
    CreateClient {
        /// The user the certificate authenticates.
        user: String,
        /// The CA's key (default: `ca.key` in --certs-dir).
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 1825)]
        lifetime_days: i64,
        /// Replace files that exist.
        #[arg(long)]
        overwrite: bool,
    },
}

/// Runs `cairn cert`.
pub(crate) fn run(a: CertArgs, certs_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(dir) = certs_dir else {
        bail!("pass --certs-dir DIR (or CAIRN_CERTS_DIR): the directory the certificates go in");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let default_key = |k: Option<PathBuf>| k.unwrap_or_else(|| dir.join(CA_KEY));
    match a.cmd {
        CertCmd::CreateCa {
            ca_key,
            lifetime_days,
            overwrite,
        } => {
            let key_path = default_key(ca_key);
            let cert_path = dir.join(CA_CERT);
            refuse_existing(&[&cert_path, &key_path], overwrite)?;
            let mut p = params(lifetime_days, "Cairn CA")?;
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().context("cannot generate a key")?;
            let cert = p
                .self_signed(&key)
                .context("cannot sign the CA certificate")?;
            write(&key_path, &key.serialize_pem(), true)?;
            write(&cert_path, &cert.pem(), false)?;
            println!(
                "created {} and {}\nkeep {} away from the nodes: only `cairn cert` needs it",
                cert_path.display(),
                key_path.display(),
                key_path.display()
            );
        }
        CertCmd::CreateNode {
            hosts,
            ca_key,
            lifetime_days,
            overwrite,
        } => {
            let issuer = load_ca(dir, &default_key(ca_key))?;
            let (cert_path, key_path) = (dir.join(NODE_CERT), dir.join(NODE_KEY));
            refuse_existing(&[&cert_path, &key_path], overwrite)?;
            let mut p = params(lifetime_days, NODE_NAME)?;
            p.subject_alt_names = CertificateParams::new(hosts.clone())
                .with_context(|| format!("{hosts:?} are not all host names or IP addresses"))?
                .subject_alt_names;
            // A node serves its ports and dials its peers with the same certificate.
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            sign_leaf(p, &issuer, &cert_path, &key_path)?;
            println!(
                "created {} and {} for {}",
                cert_path.display(),
                key_path.display(),
                hosts.join(", ")
            );
        }
        CertCmd::CreateClient {
            user,
            ca_key,
            lifetime_days,
            overwrite,
        } => {
            check_user(&user)?;
            let issuer = load_ca(dir, &default_key(ca_key))?;
            let (cert_path, key_path) = (dir.join(client_cert(&user)), dir.join(client_key(&user)));
            refuse_existing(&[&cert_path, &key_path], overwrite)?;
            let mut p = params(lifetime_days, &user)?;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            sign_leaf(p, &issuer, &cert_path, &key_path)?;
            println!(
                "created {} and {} for user {user}",
                cert_path.display(),
                key_path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes a CA, a node certificate for `hosts` and root's client certificate in `dir` (for
/// `cairn playground --secure` and `cairn chaos --secure`); keeps those already there.
pub(crate) fn make_local_certs(dir: &Path, hosts: Vec<String>) -> anyhow::Result<()> {
    if !dir.join(CA_CERT).exists() {
        run(
            CertArgs {
                cmd: CertCmd::CreateCa {
                    ca_key: None,
                    lifetime_days: 3650,
                    overwrite: false,
                },
            },
            Some(dir),
        )?;
    }
    if !dir.join(NODE_CERT).exists() {
        run(
            CertArgs {
                cmd: CertCmd::CreateNode {
                    hosts,
                    ca_key: None,
                    lifetime_days: 1825,
                    overwrite: false,
                },
            },
            Some(dir),
        )?;
    }
    if !dir.join(client_cert(cairn_types::ROOT_USER)).exists() {
        run(
            CertArgs {
                cmd: CertCmd::CreateClient {
                    user: cairn_types::ROOT_USER.into(),
                    ca_key: None,
                    lifetime_days: 1825,
                    overwrite: false,
                },
            },
            Some(dir),
        )?;
    }
    Ok(())
}

/// A user name for a client certificate: the name its holder acts as.
fn check_user(user: &str) -> anyhow::Result<()> {
    if user == NODE_NAME {
        bail!("`{NODE_NAME}` names the cluster's nodes; a client certificate needs another name");
    }
    let ok = !user.is_empty()
        && user.len() <= 63
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        bail!("user name {user:?}: use 1 to 63 letters, digits, `_`, `-` or `.`");
    }
    Ok(())
}

fn params(lifetime_days: i64, common_name: &str) -> anyhow::Result<CertificateParams> {
    if lifetime_days < 1 {
        bail!("--lifetime-days must be at least 1");
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cairn");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    // An hour's grace for clocks a little behind this one.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(lifetime_days);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn load_ca(dir: &Path, key_path: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let cert_path = dir.join(CA_CERT);
    let cert = std::fs::read_to_string(&cert_path).with_context(|| {
        format!(
            "cannot read {}; create the CA first with `cairn cert create-ca`",
            cert_path.display()
        )
    })?;
    let key = std::fs::read_to_string(key_path).with_context(|| {
        format!(
            "cannot read the CA key {}; pass --ca-key where `cairn cert create-ca` put it",
            key_path.display()
        )
    })?;
    let key = KeyPair::from_pem(&key)
        .with_context(|| format!("{} is not a private key", key_path.display()))?;
    Issuer::from_ca_cert_pem(&cert, key)
        .with_context(|| format!("{} is not a CA certificate", cert_path.display()))
}

fn sign_leaf(
    p: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<()> {
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = p
        .signed_by(&key, issuer)
        .context("cannot sign the certificate")?;
    write(key_path, &key.serialize_pem(), true)?;
    write(cert_path, &cert.pem(), false)
}

fn refuse_existing(paths: &[&Path], overwrite: bool) -> anyhow::Result<()> {
    if overwrite {
        return Ok(());
    }
    for p in paths {
        if p.exists() {
            bail!(
                "{} exists; pass --overwrite to replace it, or use another --certs-dir",
                p.display()
            );
        }
    }
    Ok(())
}

/// Writes `text` to `path`; a private key readable by its owner only.
fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if private {
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn cert(dir: &Path, file: &str) -> rustls::pki_types::CertificateDer<'static> {
        rustls::pki_types::CertificateDer::from_pem_file(dir.join(file)).unwrap()
    }

    fn cmd(c: CertCmd, dir: &Path) -> anyhow::Result<ExitCode> {
        run(CertArgs { cmd: c }, Some(dir))
    }

    #[test]
    fn certificates_chain_to_the_ca_and_name_their_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = || CertCmd::CreateCa {
            ca_key: None,
            lifetime_days: 10,
            overwrite: false,
        };
        cmd(ca(), dir).unwrap();
        cmd(
            CertCmd::CreateNode {
                hosts: vec!["127.0.0.1".into(), "localhost".into()],
                ca_key: None,
                lifetime_days: 10,
                overwrite: false,
            },
            dir,
        )
        .unwrap();
        let client = |user: &str| CertCmd::CreateClient {
            user: user.into(),
            ca_key: None,
            lifetime_days: 10,
            overwrite: false,
        };
        cmd(client("root"), dir).unwrap();
        // Nothing is overwritten by accident, and no client may call itself a node.
        assert!(cmd(ca(), dir).is_err());
        assert!(cmd(client("node"), dir).is_err());
        assert!(cmd(client("a/b"), dir).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(NODE_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the node key is private");

        // The node's and the client's certificates verify against the CA, and their common
        // names say who holds them.
        assert_eq!(
            cairn_proto::tls::common_name(&cert(dir, NODE_CERT)).as_deref(),
            Some(NODE_NAME)
        );
        assert_eq!(
            cairn_proto::tls::common_name(&cert(dir, &client_cert("root"))).as_deref(),
            Some("root")
        );
        cairn_proto::tls::NodeTls::load(dir).unwrap();
        cairn_proto::tls::client_config(dir, "root", b"h2").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(dir, CA_CERT)).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            rustls::crypto::ring::default_provider().into(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_client_cert(&cert(dir, &client_cert("root")), &[], now)
            .unwrap();
        verifier
            .verify_client_cert(&cert(dir, NODE_CERT), &[], now)
            .unwrap();

        // Another CA's certificate does not.
        let other = tempfile::tempdir().unwrap();
        cmd(ca(), other.path()).unwrap();
        cmd(client("root"), other.path()).unwrap();
        assert!(
            verifier
                .verify_client_cert(&cert(other.path(), &client_cert("root")), &[], now)
                .is_err()
        );
    }
}
