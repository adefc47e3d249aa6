//! Certificates for the TLS tests: a test CA that issues server and client
//! certificates (ECDSA P-256), written as PEM files in a fresh directory.

use std::fs;
use std::path::PathBuf;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::proxy::temp_path;

/// A certificate and key on disk.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    /// The inline TOML of one `certificates` entry.
    pub fn toml(&self) -> String {
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            self.cert.display(),
            self.key.display()
        )
    }
}

pub struct TestCa {
    dir: PathBuf,
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert: PathBuf,
    serial: u64,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = temp_path("ringgate-pki", "d");
        fs::create_dir_all(&dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        let path = dir.join("ca.pem");
        fs::write(&path, cert.pem()).expect("write ca");
        TestCa {
            dir,
            params,
            key,
            cert: path,
            serial: 1,
        }
    }

    fn issue_with(&mut self, file: &str, edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        self.serial += 1;
        params.serial_number = Some(self.serial.into());
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        fs::write(&issued.cert, cert.pem()).expect("write cert");
        fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }

    /// A server certificate for `names` (DNS names, `*.wildcards` allowed),
    /// with `names[0]` as its common name.
    pub fn server(&mut self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, |p| {
            p.subject_alt_names = names
                .iter()
                .map(|n| rcgen::SanType::DnsName((*n).try_into().expect("dns name")))
                .collect();
            p.distinguished_name.push(DnType::CommonName, names[0]);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        })
    }

    /// A server certificate that expired in 2020.
    pub fn expired_server(&mut self, file: &str, name: &str) -> Issued {
        self.issue_with(file, |p| {
            p.subject_alt_names = vec![rcgen::SanType::DnsName(name.try_into().expect("dns"))];
            p.not_before = date_time_ymd(2019, 1, 1);
            p.not_after = date_time_ymd(2020, 1, 1);
        })
    }

    /// A client certificate whose subject is `CN=<cn>`.
    pub fn client(&mut self, file: &str, cn: &str) -> Issued {
        self.issue_with(file, |p| {
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })
    }

    /// Where the files live.
    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
