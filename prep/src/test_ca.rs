//! The Quill TEST CA's **public** key (index [`TEST_CA_INDEX`] under any RID), which every build
//! knows so that a cluster can be given it (`quill ca import --test-ca`). Its private key is in
//! [`crate::testkeys`], behind the `test-keys` feature.

use crate::emv::cert::{CaPublicKey, Rid};

/// The CA index the TEST CA signs under, for every RID.
pub const TEST_CA_INDEX: u8 = 0xFE;
/// The TEST CA's public key (PEM, RSA-1984, e = 3).
pub const TEST_CA_PUBLIC_PEM: &str = include_str!("../test-keys/quill-TEST-ca-1984.pub.pem");

/// The TEST CA's public key under `rid`, index [`TEST_CA_INDEX`].
pub fn public(rid: Rid) -> Result<CaPublicKey, String> {
    let rsa = openssl::rsa::Rsa::public_key_from_pem(TEST_CA_PUBLIC_PEM.as_bytes())
        .map_err(|e| format!("prep/test-keys/quill-TEST-ca-1984.pub.pem: {e}"))?;
    CaPublicKey::new(rid, TEST_CA_INDEX, &rsa.n().to_vec(), &rsa.e().to_vec()).map_err(|e| e.to_string())
}

#[cfg(all(test, feature = "test-keys"))]
mod tests {
    #[test]
    fn the_public_key_is_the_private_keys() {
        let rid = crate::emv::cert::RID_MASTERCARD;
        let from_public = super::public(rid).expect("public");
        let from_private = crate::testkeys::TestCa::builtin().public(rid);
        assert_eq!(from_public.public_key().modulus(), from_private.public_key().modulus());
        assert_eq!(from_public.public_key().exponent(), from_private.public_key().exponent());
    }
}
