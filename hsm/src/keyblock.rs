//! TR-31 rules that need no key: the checks made on the host before a key is touched, the header
//! of an export, and the mapping between TR-31 algorithms and [`KeyAlg`]. Both ways of doing
//! TR-31 (hsm-sim's vendor mechanisms, the host path) go through these, so every module refuses
//! the same requests with the same messages, which are those of `quill_crypto::tr31`.

use crate::types::{Kcv, KeyAlg, KeyUse, RsaPublic, WrappedKey, WrappedRsaKey};
use quill_crypto::tr31::{
    self, Algorithm, BlockId, Exportability, Kbpk, KeyContext, KeyUsage, ModeOfUse, OptionalBlock, Tr31Error,
    Tr31Header, Version,
};

/// `HM` optional block value of SHA-256 (ANSI X9.143-2022 table 13, TR-31:2018 A.5.9): the hash of
/// every Quill HMAC key.
pub(crate) const HM_SHA256: &str = "21";

/// The TR-31 mode of use Quill writes into an exported key block for each key usage:
///
/// | usage | mode of use |
/// |---|---|
/// | `B0`–`B2` (DUKPT base/initial keys), `E0`–`E6` (EMV issuer master keys) | `X` derive keys |
/// | `C0` (CVK), `M0`–`M8` (MAC and HMAC keys), `V0`–`V4` (PIN verification keys) | `C` generate and verify |
/// | `D0`, `D2` (data encryption), `K0` (KEK), `K1` (KBPK), `P0` (PIN encryption) | `B` encrypt/decrypt, wrap/unwrap |
/// | `I0` (initialisation value), proprietary (two digits) | `N` no restriction |
/// | `D1`, `K2`, `K3`, `S0`–`S2` (asymmetric keys) | none: Quill holds no asymmetric key |
///
/// Each is the broadest mode the usage allows, so the receiver may use the key for everything its
/// usage is for; a narrower mode (`E`, `D`, `G`, `V`) is the receiver's choice on re-export.
pub fn tr31_mode_of_use(usage: KeyUsage) -> Option<ModeOfUse> {
    use KeyUsage as U;
    Some(match usage {
        U::Bdk
        | U::InitialDukptKey
        | U::BaseKeyVariantKey
        | U::EmvAc
        | U::EmvSmc
        | U::EmvSmi
        | U::EmvDac
        | U::EmvDn
        | U::EmvPersonalisation
        | U::EmvOther => ModeOfUse::DeriveKeys,
        U::Cvk
        | U::Iso16609Mac
        | U::Iso9797Mac1
        | U::Iso9797Mac2
        | U::Iso9797Mac3
        | U::Iso9797Mac4
        | U::Iso9797Mac5
        | U::Cmac
        | U::Hmac
        | U::Iso9797Mac6
        | U::PinVerificationOther
        | U::PinVerificationIbm3624
        | U::PinVerificationVisaPvv
        | U::PinVerificationX9132Alg1
        | U::PinVerificationX9132Alg2 => ModeOfUse::GenerateVerify,
        U::DataEncryption | U::DecimalisationTable | U::KeyEncryption | U::Kbpk | U::PinEncryption => {
            ModeOfUse::EncryptDecrypt
        }
        U::Iv | U::Proprietary(_) => ModeOfUse::NoRestrictions,
        U::AsymmetricDataEncryption
        | U::Tr34Asymmetric
        | U::AsymmetricKeyAgreement
        | U::AsymmetricSignature
        | U::AsymmetricCa
        | U::AsymmetricOther => return None,
    })
}

/// What a TR-31 key usage is for, in a few words (ANSI X9.143-2022 table 6), for messages that
/// name a key's usage beside its code: `E0 (EMV IMK, application cryptograms)`.
pub fn tr31_usage_name(usage: KeyUsage) -> &'static str {
    use KeyUsage as U;
    match usage {
        U::Bdk => "DUKPT base derivation key",
        U::InitialDukptKey => "initial DUKPT key",
        U::BaseKeyVariantKey => "base key variant key",
        U::Cvk => "card verification key",
        U::DataEncryption => "data encryption",
        U::AsymmetricDataEncryption => "asymmetric data encryption",
        U::DecimalisationTable => "decimalisation table encryption",
        U::EmvAc => "EMV IMK, application cryptograms",
        U::EmvSmc => "EMV IMK, secure messaging for confidentiality",
        U::EmvSmi => "EMV IMK, secure messaging for integrity",
        U::EmvDac => "EMV IMK, data authentication code",
        U::EmvDn => "EMV IMK, dynamic numbers",
        U::EmvPersonalisation => "EMV IMK, card personalisation",
        U::EmvOther => "EMV IMK, other",
        U::Iv => "initialisation vector",
        U::KeyEncryption => "key encryption",
        U::Kbpk => "TR-31 key block protection",
        U::Tr34Asymmetric => "TR-34 asymmetric key",
        U::AsymmetricKeyAgreement => "asymmetric key agreement or wrapping",
        U::Iso16609Mac => "ISO 16609 MAC",
        U::Iso9797Mac1 => "ISO 9797-1 MAC algorithm 1",
        U::Iso9797Mac2 => "ISO 9797-1 MAC algorithm 2",
        U::Iso9797Mac3 => "ISO 9797-1 MAC algorithm 3, retail MAC",
        U::Iso9797Mac4 => "ISO 9797-1 MAC algorithm 4",
        U::Iso9797Mac5 => "ISO 9797-1:1999 MAC algorithm 5",
        U::Cmac => "CMAC",
        U::Hmac => "HMAC",
        U::Iso9797Mac6 => "ISO 9797-1:2011 MAC algorithm 6",
        U::PinEncryption => "PIN encryption",
        U::AsymmetricSignature => "asymmetric digital signature",
        U::AsymmetricCa => "asymmetric CA key",
        U::AsymmetricOther => "asymmetric key, non-X9.24",
        U::PinVerificationOther => "PIN verification, other algorithm",
        U::PinVerificationIbm3624 => "PIN verification, IBM 3624",
        U::PinVerificationVisaPvv => "PIN verification, Visa PVV",
        U::PinVerificationX9132Alg1 => "PIN verification, X9.132 algorithm 1",
        U::PinVerificationX9132Alg2 => "PIN verification, X9.132 algorithm 2",
        U::Proprietary(_) => "proprietary",
    }
}

/// Whether TR-31 lets a key of `alg` have `usage` (the usage's algorithms, as a received header is
/// checked; an asymmetric usage fits no key Quill holds).
pub fn tr31_usage_allows(usage: KeyUsage, alg: KeyAlg) -> bool {
    let code = usage.code();
    std::str::from_utf8(&code).is_ok_and(|c| export_header(KeyAlg::Aes256, alg, c, true).is_ok())
}

/// Family name of a KBPK, as `quill_crypto::tr31` writes it.
fn family(alg: KeyAlg) -> &'static str {
    if alg.is_tdes() {
        "TDES"
    } else if alg.is_aes() {
        "AES"
    } else {
        "HMAC"
    }
}

/// The key block version a KBPK protects: B for TDES, D for AES.
pub(crate) fn version_for(kbpk: KeyAlg) -> Result<Version, String> {
    if kbpk.is_tdes() {
        Ok(Version::B)
    } else if kbpk.is_aes() {
        Ok(Version::D)
    } else {
        Err(format!("TR-31: a {kbpk} key cannot be a KBPK (TDES protects version B key blocks, AES version D)"))
    }
}

/// A KBPK of algorithm `kbpk` must fit `version` (TDES for B, AES for D).
pub(crate) fn check_kbpk(kbpk: KeyAlg, version: Version) -> Result<(), String> {
    if version_for(kbpk)? == version {
        return Ok(());
    }
    let needs = match version {
        Version::B => "TDES",
        Version::D => "AES",
    };
    Err(Tr31Error::KbpkType { version: version.id(), needs, got: family(kbpk) }.to_string())
}

/// The KBPK's value as `quill_crypto::tr31` takes it (`alg` has passed [`version_for`]).
pub(crate) fn kbpk(alg: KeyAlg, value: &[u8]) -> Kbpk<'_> {
    if alg.is_tdes() { Kbpk::Tdes(value) } else { Kbpk::Aes(value) }
}

/// The checks on a key block to import that need no key, made before any key is touched: the
/// header (strictly, as `quill_crypto::tr31` parses it), the length field, the structure of
/// the encrypted key data and MAC, the KBPK's family for the version, an algorithm Quill can hold
/// (`T`, `A`, `H` with SHA-256) and an exportability that lets the key be stored under the SMK
/// (`E` or `S`). What is left for the HSM (or the host path) is the MAC and the key inside.
pub(crate) fn check_import(kbpk_alg: KeyAlg, block: &str) -> Result<Tr31Header, String> {
    let header = tr31::parse_key_block_header(block.as_bytes()).map_err(|e| e.to_string())?;
    check_kbpk(kbpk_alg, header.version)?;
    // `tr31::unwrap` checks the whole structure (header, lengths, hex) before any cryptography.
    // Run with an all-zero KBPK of the right family and length, it stops at the MAC unless the
    // structure is wrong, and then names the problem and its position exactly as the module (which
    // runs the same code) or the host path would. No key is involved.
    let zeros = [0u8; 32];
    let probe = kbpk(kbpk_alg, &zeros[..kbpk_alg.key_len()]);
    match tr31::unwrap(probe, block.as_bytes()) {
        Ok(_) | Err(Tr31Error::Mac | Tr31Error::KeyLengthField { .. } | Tr31Error::KeyLength { .. }) => {}
        Err(e) => return Err(e.to_string()),
    }
    match header.algorithm {
        Algorithm::Tdes | Algorithm::Aes => {}
        Algorithm::Hmac => {
            if let Some(hm) = header.optional_block(BlockId::Hm)
                && hm != HM_SHA256
            {
                return Err(format!(
                    "TR-31 optional block \"HM\": hash algorithm {hm:?} is not SHA-256 ({HM_SHA256:?}); Quill's HMAC keys are HMAC-SHA-256 keys"
                ));
            }
        }
        Algorithm::Des => {
            return Err("TR-31 header: algorithm at position 7: \"D\" (single DES) cannot be imported; Quill holds TDES, AES and HMAC-SHA-256 keys".to_owned());
        }
        a => {
            return Err(format!(
                "TR-31 header: algorithm at position 7: {:?} is an asymmetric algorithm; Quill imports TDES, AES and HMAC-SHA-256 keys only",
                a.code().to_string()
            ));
        }
    }
    if header.exportability == Exportability::NonExportable {
        return Err("TR-31 header: exportability at position 11: \"N\" (non-exportable) cannot be imported: Quill keeps every key wrapped under its storage master key, and a module holding a non-exportable key refuses to wrap it; ask for the block with exportability E or S".to_owned());
    }
    Ok(header)
}

/// The [`KeyAlg`] of an imported key of `len` bytes whose header says `algorithm`.
pub(crate) fn key_alg_of(algorithm: Algorithm, len: usize) -> Result<KeyAlg, String> {
    match (algorithm, len) {
        (Algorithm::Tdes, 16) => Ok(KeyAlg::Des2),
        (Algorithm::Tdes, 24) => Ok(KeyAlg::Des3),
        (Algorithm::Aes, 16) => Ok(KeyAlg::Aes128),
        (Algorithm::Aes, 24) => Ok(KeyAlg::Aes192),
        (Algorithm::Aes, 32) => Ok(KeyAlg::Aes256),
        (Algorithm::Hmac, 32) => Ok(KeyAlg::HmacSha256),
        (a, len) => Err(format!(
            "TR-31: the key block holds a {len}-byte algorithm {} key, which is no Quill key type (TDES 16 or 24 bytes, AES 16, 24 or 32, HMAC-SHA-256 32)",
            a.code()
        )),
    }
}

/// The header of an export of a `key` under a `kbpk`: version B for a TDES KBPK, D for AES; the
/// given usage code; algorithm `T`, `A` or `H` (with an `HM` block for SHA-256) from the key;
/// mode of use from the usage ([`tr31_mode_of_use`]); exportability `E` or `N`; key version `00`;
/// key context `0`; length `0000` (filled in by the wrap). Checked as a received header is (usage,
/// algorithm and mode fit together), and the key must not be stronger than the KBPK.
pub(crate) fn export_header(kbpk: KeyAlg, key: KeyAlg, usage: &str, exportable: bool) -> Result<Tr31Header, String> {
    let version = version_for(kbpk)?;
    let code: [u8; 2] = usage
        .as_bytes()
        .try_into()
        .map_err(|_| format!("TR-31: key usage {usage:?} must be two characters (for example \"E0\")"))?;
    let key_usage = KeyUsage::from_code(code).ok_or_else(|| format!("TR-31: {usage:?} is not a key usage"))?;
    let mode = tr31_mode_of_use(key_usage).ok_or_else(|| {
        format!("TR-31: key usage {usage:?} is for asymmetric keys; Quill exports TDES, AES and HMAC keys only")
    })?;
    let algorithm = if key.is_tdes() {
        Algorithm::Tdes
    } else if key.is_aes() {
        Algorithm::Aes
    } else {
        Algorithm::Hmac
    };
    // As `tr31::wrap` (and hsm-sim) refuse: a key stronger than its KBPK (X9.24-1).
    let weaker = match version {
        Version::B => key.is_aes() || (key.is_tdes() && key.key_len() > kbpk.key_len()),
        Version::D => key.is_aes() && key.key_len() > kbpk.key_len(),
    };
    if weaker {
        return Err(Tr31Error::KbpkWeaker {
            algorithm: family(key),
            key_len: key.key_len(),
            kbpk: family(kbpk),
            kbpk_len: kbpk.key_len(),
        }
        .to_string());
    }
    let exportability = if exportable { Exportability::Trusted } else { Exportability::NonExportable };
    let mut header = Tr31Header::new(version, key_usage, algorithm, mode, exportability);
    if algorithm == Algorithm::Hmac {
        header.optional_blocks.push(OptionalBlock::new(BlockId::Hm, HM_SHA256));
    }
    // The template is checked as hsm-sim checks the mechanism parameter (the PB block is added by
    // the wrap).
    let text = header.encode().map_err(|e| e.to_string())?;
    Tr31Header::parse_template(text.as_bytes()).map_err(|e| e.to_string())
}

// ---- key blocks at rest ------------------------------------------------------------------------

/// What the adapter does with a key at rest, and so the TR-31 usages a block must name to serve
/// it: the HSM adapter refuses any other before the block is opened (PCI PIN 18-3), whatever the
/// inventory record beside it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Protect TR-31 key blocks (import/export): `K0`, `K1`.
    Kbpk,
    /// Derive ICC master keys: `E0`–`E6`.
    Imk,
    /// Encrypt what goes to the card (secret DGIs, the offline PIN): `D0`, `K0`.
    Transport,
    /// CVV/iCVV/CVV2: `C0`.
    Cvk,
    /// Encrypt or decrypt PIN blocks: `P0`.
    PinKey,
    /// Receive a translated PIN block: a PIN key, or the transport key a chip's offline PIN
    /// travels under (`P0`, `D0`, `K0`).
    PinTarget,
    /// PVV or IBM 3624 offset: `V0`–`V4`.
    Pvk,
    /// HMAC-SHA-256: `M7`.
    Hmac,
    /// AES-GCM sealing of data: `D0`.
    Data,
}

impl Role {
    fn allows(self, u: KeyUsage) -> bool {
        use KeyUsage as U;
        match self {
            Role::Kbpk => matches!(u, U::KeyEncryption | U::Kbpk),
            Role::Imk => {
                matches!(
                    u,
                    U::EmvAc | U::EmvSmc | U::EmvSmi | U::EmvDac | U::EmvDn | U::EmvPersonalisation | U::EmvOther
                )
            }
            Role::Transport => matches!(u, U::DataEncryption | U::KeyEncryption),
            Role::Cvk => u == U::Cvk,
            Role::PinKey => u == U::PinEncryption,
            Role::PinTarget => matches!(u, U::PinEncryption | U::DataEncryption | U::KeyEncryption),
            Role::Pvk => matches!(
                u,
                U::PinVerificationOther
                    | U::PinVerificationIbm3624
                    | U::PinVerificationVisaPvv
                    | U::PinVerificationX9132Alg1
                    | U::PinVerificationX9132Alg2
            ),
            Role::Hmac => u == U::Hmac,
            Role::Data => u == U::DataEncryption,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Kbpk => "a key-block protection key or KEK (K1, K0)",
            Role::Imk => "an EMV issuer master key (E0-E6)",
            Role::Transport => "a transport key: data encryption or KEK (D0, K0)",
            Role::Cvk => "a card verification key (C0)",
            Role::PinKey => "a PIN encryption key (P0)",
            Role::PinTarget => "a PIN encryption key or a transport key (P0, D0, K0)",
            Role::Pvk => "a PIN verification key (V0-V4)",
            Role::Hmac => "an HMAC key (M7)",
            Role::Data => "a data encryption key (D0)",
        }
    }
}

/// The KBPK of blocks at rest is AES-256 (version D).
pub(crate) const AT_REST_KBPK: KeyAlg = KeyAlg::Aes256;

/// The `KC` optional block of a key's KCV: algorithm `00` (legacy: encrypt zeros, TDES) or `01`
/// (CMAC, AES), then the KCV in hex. HMAC keys have no KC algorithm; their blocks carry none.
fn kc_block(alg: KeyAlg, kcv: &Kcv) -> Option<OptionalBlock> {
    let algorithm = if alg.is_tdes() {
        "00"
    } else if alg.is_aes() {
        "01"
    } else {
        return None;
    };
    Some(OptionalBlock::new(BlockId::Kc, format!("{algorithm}{kcv}")))
}

/// The proprietary optional block (numeric ids are proprietary in X9.143) that binds a key at rest
/// to its tenant: the tenant's name (1-32 of `a-z 0-9 - _ .`).
pub(crate) const OWNER_BLOCK: BlockId = BlockId::Other(*b"0T");

/// The tenant a header at rest binds its key to ([`OWNER_BLOCK`]).
pub(crate) fn at_rest_owner(header: &Tr31Header) -> Option<String> {
    header.optional_block(OWNER_BLOCK).map(str::to_owned)
}

/// The header of a key block at rest: version D, the use's usage, the algorithm of the key, the
/// mode of use of the usage ([`tr31_mode_of_use`]), exportability `E` or `N`, key version `00`,
/// key context `1` (storage only: it never travels), `HM` for HMAC keys, `KC` with the KCV, and
/// the owning tenant in [`OWNER_BLOCK`] when the use names one.
pub(crate) fn at_rest_header(alg: KeyAlg, key_use: KeyUse, kcv: &Kcv) -> Result<Tr31Header, String> {
    let mut header = export_header(AT_REST_KBPK, alg, &key_use.code(), key_use.exportable)?;
    header.key_context = KeyContext::Storage;
    header.optional_blocks.extend(kc_block(alg, kcv));
    push_owner(&mut header, key_use.owner.as_deref())?;
    as_template(&header)
}

/// `header` with the owning tenant's [`OWNER_BLOCK`] added, when there is one.
fn push_owner(header: &mut Tr31Header, owner: Option<&str>) -> Result<(), String> {
    if let Some(owner) = owner {
        let ok = (1..=32).contains(&owner.len())
            && owner.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !ok {
            return Err(format!("tenant {owner:?}: 1-32 characters of a-z 0-9 - _ ."));
        }
        header.optional_blocks.push(OptionalBlock::new(OWNER_BLOCK, owner.to_owned()));
    }
    Ok(())
}

/// `header` as the wrap mechanisms take it (checked as hsm-sim checks the parameter).
fn as_template(header: &Tr31Header) -> Result<Tr31Header, String> {
    let text = header.encode().map_err(|e| e.to_string())?;
    Tr31Header::parse_template(text.as_bytes()).map_err(|e| e.to_string())
}

/// Proprietary optional block binding an RSA private key at rest to its public key: the
/// fingerprint (upper-case hex SHA-256 of the SPKI, [`RsaPublic::fingerprint`]).
pub(crate) const PUBLIC_BLOCK: BlockId = BlockId::Other(*b"0P");

/// The header of an issuer RSA private key at rest: version D, usage `S0` (digital signature),
/// algorithm `R`, mode of use `S` (sign only), exportability `N` (it never leaves the HSMs but as
/// this block), key version `00`, key context `1`, the public key's fingerprint in
/// [`PUBLIC_BLOCK`] and the owning tenant in [`OWNER_BLOCK`]. The key data is its DER PKCS#8.
pub(crate) fn rsa_at_rest_header(public: &RsaPublic, owner: Option<&str>) -> Result<Tr31Header, String> {
    let mut header = Tr31Header::new(
        Version::D,
        KeyUsage::AsymmetricSignature,
        Algorithm::Rsa,
        ModeOfUse::SignatureOnly,
        Exportability::NonExportable,
    );
    header.key_context = KeyContext::Storage;
    header.optional_blocks.push(OptionalBlock::new(PUBLIC_BLOCK, public.fingerprint()));
    push_owner(&mut header, owner)?;
    as_template(&header)
}

/// The header of an RSA block at rest, read before it is opened, and what it must say: every
/// field [`rsa_at_rest_header`] writes, the fingerprint of the record's public key among them.
/// The MAC (checked when the block is opened) proves the header is the one the HSM wrote.
pub(crate) fn rsa_at_rest_check(key: &WrappedRsaKey) -> Result<Tr31Header, String> {
    let header = key.header()?;
    let found = (
        header.version,
        header.key_context,
        header.algorithm,
        header.key_usage,
        header.mode_of_use,
        header.exportability,
    );
    let wanted = (
        Version::D,
        KeyContext::Storage,
        Algorithm::Rsa,
        KeyUsage::AsymmetricSignature,
        ModeOfUse::SignatureOnly,
        Exportability::NonExportable,
    );
    if found != wanted {
        return Err(format!(
            "an issuer key's block at rest must be version D, key context 1, algorithm R, usage S0, mode S, exportability N; this one is version {}, context {}, algorithm {}, usage {}, mode {}, exportability {}",
            header.version.id(),
            header.key_context.code(),
            header.algorithm.code(),
            String::from_utf8_lossy(&header.key_usage.code()),
            header.mode_of_use.code(),
            header.exportability.code()
        ));
    }
    let fingerprint = key.public.fingerprint();
    match header.optional_block(PUBLIC_BLOCK) {
        Some(f) if f == fingerprint => Ok(header),
        f => Err(format!(
            "the RSA key block at rest is bound to public key {}, the record's is {}: the record was altered",
            f.map_or("(none)", |f| f.get(..16).unwrap_or(f)),
            &fingerprint[..16]
        )),
    }
}

/// The header at rest of a key imported from `imported` under a KBPK of tenant `owner`: its usage,
/// mode of use, exportability and key version are kept (a narrower mode stays narrow), the rest as
/// [`at_rest_header`]; the key belongs to the KBPK's tenant.
pub(crate) fn at_rest_from_import(
    imported: &Tr31Header,
    alg: KeyAlg,
    kcv: &Kcv,
    owner: Option<String>,
) -> Result<Tr31Header, String> {
    let code = String::from_utf8_lossy(&imported.key_usage.code()).into_owned();
    let exportable = imported.exportability != Exportability::NonExportable;
    let key_use = KeyUse { owner, ..KeyUse::from_code(&code, exportable)? };
    let mut header = at_rest_header(alg, key_use, kcv)?;
    header.mode_of_use = imported.mode_of_use;
    header.exportability = imported.exportability;
    header.key_version = imported.key_version;
    as_template(&header)
}

/// The header of a block at rest, read before it is opened, and the checks it must pass for
/// `role` (none: any role, e.g. a KCV or an export): version D, key context `1`, the algorithm of
/// the record, a usage the role allows. The MAC (checked when the block is opened, inside the
/// HSM or on the host path) proves the header is the one the HSM wrote.
pub(crate) fn at_rest_check(key: &WrappedKey, role: Option<Role>) -> Result<Tr31Header, String> {
    let header = key.header()?;
    if header.version != Version::D || header.key_context != KeyContext::Storage {
        return Err(format!(
            "the key block at rest must be version D with key context 1 (storage), not version {} context {}",
            header.version.id(),
            header.key_context.code()
        ));
    }
    let fits = match header.algorithm {
        Algorithm::Tdes => key.alg.is_tdes(),
        Algorithm::Aes => key.alg.is_aes(),
        Algorithm::Hmac => key.alg == KeyAlg::HmacSha256,
        _ => false,
    };
    if !fits {
        return Err(format!(
            "the key block at rest holds an algorithm {} key; the record says {}",
            header.algorithm.code(),
            key.alg
        ));
    }
    if let Some(role) = role
        && !role.allows(header.key_usage)
    {
        let code = String::from_utf8_lossy(&header.key_usage.code()).into_owned();
        return Err(format!(
            "the key's block says usage {code} ({}); this operation needs {}",
            tr31_usage_name(header.key_usage),
            role.name()
        ));
    }
    Ok(header)
}

/// The KCV a block at rest carries in its `KC` block, if any.
pub(crate) fn at_rest_kcv(header: &Tr31Header) -> Option<Kcv> {
    let kc = header.optional_block(BlockId::Kc)?;
    Kcv::parse(kc.get(2..)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn modes_of_use_fit_their_usages() {
        // Every usage with a mode gets one the TR-31 rules accept for some algorithm Quill has.
        for code in [
            "B0", "B1", "B2", "C0", "D0", "D2", "E0", "E1", "E2", "E3", "E4", "E5", "E6", "I0", "K0", "K1", "M0", "M1",
            "M2", "M3", "M4", "M5", "M6", "M7", "M8", "P0", "V0", "V1", "V2", "V3", "V4", "42",
        ] {
            let ok = [KeyAlg::Des2, KeyAlg::Aes256, KeyAlg::HmacSha256]
                .into_iter()
                .any(|k| export_header(KeyAlg::Aes256, k, code, true).is_ok());
            assert!(ok, "{code}");
        }
        for code in ["D1", "K2", "K3", "S0", "S1", "S2"] {
            let e = export_header(KeyAlg::Aes256, KeyAlg::Aes256, code, true).unwrap_err();
            assert!(e.contains("asymmetric"), "{e}");
        }
    }

    #[test]
    fn usage_names_and_algorithms() {
        assert_eq!(tr31_usage_name(KeyUsage::EmvAc), "EMV IMK, application cryptograms");
        assert_eq!(tr31_usage_name(KeyUsage::DataEncryption), "data encryption");
        assert_eq!(tr31_usage_name(KeyUsage::KeyEncryption), "key encryption");
        for (code, alg, fits) in [
            (*b"E0", KeyAlg::Des2, true),
            (*b"E0", KeyAlg::Aes128, true),
            (*b"E0", KeyAlg::HmacSha256, false),
            (*b"M7", KeyAlg::HmacSha256, true),
            (*b"M7", KeyAlg::Des2, false),
            (*b"M0", KeyAlg::Aes128, false),
            (*b"P0", KeyAlg::Aes128, true),
            (*b"C0", KeyAlg::Des2, true),
            (*b"S0", KeyAlg::Des2, false),
        ] {
            let u = KeyUsage::from_code(code).unwrap();
            assert_eq!(tr31_usage_allows(u, alg), fits, "{u:?} {alg}");
        }
    }

    #[test]
    fn export_headers() {
        let h = export_header(KeyAlg::Des2, KeyAlg::Des2, "E0", true).unwrap();
        assert_eq!(h.encode().unwrap(), "B0000E0TX00E0000");
        let h = export_header(KeyAlg::Aes256, KeyAlg::Aes128, "P0", false).unwrap();
        assert_eq!(h.encode().unwrap(), "D0000P0AB00N0000");
        let h = export_header(KeyAlg::Aes128, KeyAlg::HmacSha256, "M7", true).unwrap();
        assert_eq!(h.encode().unwrap(), "D0000M7HC00E0100HM0621");
        let h = export_header(KeyAlg::Aes128, KeyAlg::Des3, "42", true).unwrap();
        assert_eq!(h.encode().unwrap(), "D000042TN00E0000");
        for (kbpk, key, usage, needle) in [
            (KeyAlg::Des2, KeyAlg::Aes128, "D0", "stronger"),
            (KeyAlg::Des2, KeyAlg::Des3, "D0", "stronger"),
            (KeyAlg::Aes128, KeyAlg::Aes256, "D0", "stronger"),
            (KeyAlg::HmacSha256, KeyAlg::Aes128, "D0", "cannot be a KBPK"),
            (KeyAlg::Aes256, KeyAlg::Des2, "M7", "algorithm"),
            (KeyAlg::Aes256, KeyAlg::HmacSha256, "E0", "algorithm"),
            (KeyAlg::Aes256, KeyAlg::Aes128, "ZZ", "not a key usage"),
            (KeyAlg::Aes256, KeyAlg::Aes128, "E", "two characters"),
        ] {
            let e = export_header(kbpk, key, usage, true).unwrap_err();
            assert!(e.contains(needle), "{kbpk} {key} {usage}: {e}");
        }
    }

    #[test]
    fn import_checks_need_no_key() {
        let kbpk = [0x11u8; 16];
        let key = [0x22u8; 16];
        let header = Tr31Header::parse_template(b"B0000P0TE00E0000").unwrap();
        let block = tr31::wrap(Kbpk::Tdes(&kbpk), &header, &key, None, &mut |b: &mut [u8]| b.fill(7)).unwrap();
        assert_eq!(check_import(KeyAlg::Des2, &block).unwrap().key_usage, KeyUsage::PinEncryption);
        let e = check_import(KeyAlg::Aes128, &block).unwrap_err();
        assert_eq!(e, "TR-31: a version B key block needs a KBPK of TDES, not AES");
        // Structure errors come with their position, before any key is used.
        let mut bad = block.clone().into_bytes();
        bad[20] = b'g';
        let e = check_import(KeyAlg::Des2, std::str::from_utf8(&bad).unwrap()).unwrap_err();
        assert!(e.contains("position 20") && e.contains("hex"), "{e}");
        let e = check_import(KeyAlg::Des2, &block[..block.len() - 8]).unwrap_err();
        assert!(e.contains("block length"), "{e}");
        // A flipped MAC character is left for the MAC check.
        let mut flipped = block.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(check_import(KeyAlg::Des2, std::str::from_utf8(&flipped).unwrap()).is_ok());
        // Non-exportable and single-DES blocks are refused.
        let n = Tr31Header::parse_template(b"B0000P0TE00N0000").unwrap();
        let block = tr31::wrap(Kbpk::Tdes(&kbpk), &n, &key, None, &mut |b: &mut [u8]| b.fill(7)).unwrap();
        assert!(check_import(KeyAlg::Des2, &block).unwrap_err().contains("non-exportable"));
        let d = Tr31Header::parse_template(b"B0000D0DB00E0000").unwrap();
        let block = tr31::wrap(Kbpk::Tdes(&kbpk), &d, &[0x33; 8], None, &mut |b: &mut [u8]| b.fill(7)).unwrap();
        assert!(check_import(KeyAlg::Des2, &block).unwrap_err().contains("single DES"));
    }

    #[test]
    fn headers_at_rest() {
        let kcv = Kcv::parse("08D7B4").unwrap();
        let h = at_rest_header(KeyAlg::Des2, KeyUse::new(KeyUsage::Cvk, false), &kcv).unwrap();
        assert_eq!(h.encode().unwrap(), "D0000C0TC00N0110KC0C0008D7B4");
        let h = at_rest_header(KeyAlg::HmacSha256, KeyUse::new(KeyUsage::Hmac, true), &kcv).unwrap();
        assert_eq!(h.encode().unwrap(), "D0000M7HC00E0110HM0621");
        // An imported key keeps its narrower mode, its exportability and version.
        let mut imported = Tr31Header::parse_template(b"B0000P0TE12S0000").unwrap();
        imported.key_context = KeyContext::Exchange;
        let h = at_rest_from_import(&imported, KeyAlg::Des2, &kcv, None).unwrap();
        assert_eq!(h.encode().unwrap(), "D0000P0TE12S0110KC0C0008D7B4");
        // The owning tenant is bound in a proprietary block (and inherited from the KBPK).
        let h = at_rest_header(KeyAlg::Des2, KeyUse::new(KeyUsage::Cvk, false).owned_by("bank-b"), &kcv).unwrap();
        assert_eq!(h.encode().unwrap(), "D0000C0TC00N0210KC0C0008D7B40T0Abank-b");
        assert_eq!(at_rest_owner(&h).as_deref(), Some("bank-b"));
        let h = at_rest_from_import(&imported, KeyAlg::Des2, &kcv, Some("bank-b".into())).unwrap();
        assert_eq!(at_rest_owner(&h).as_deref(), Some("bank-b"));
        for bad in ["", "Bank B", "x".repeat(33).as_str()] {
            assert!(at_rest_header(KeyAlg::Des2, KeyUse::new(KeyUsage::Cvk, false).owned_by(bad), &kcv).is_err());
        }
        // Usage and algorithm must fit, as for an export.
        assert!(at_rest_header(KeyAlg::HmacSha256, KeyUse::new(KeyUsage::EmvAc, true), &kcv).is_err());
    }

    #[test]
    fn blocks_at_rest_are_checked_before_they_are_opened() {
        let kbpk = [0x11u8; 32];
        let kcv = Kcv::parse("08D7B4").unwrap();
        let block = |text: &str| {
            let h = Tr31Header::parse_template(text.as_bytes()).unwrap();
            let b = tr31::wrap(Kbpk::Aes(&kbpk), &h, &[0x22; 16], Some(24), &mut |b: &mut [u8]| b.fill(7)).unwrap();
            WrappedKey { alg: KeyAlg::Des2, blob: b.into_bytes(), kcv: kcv.clone(), smk_kcv: kcv.clone() }
        };
        let cvk = block("D0000C0TC00N0110KC0C0008D7B4");
        assert_eq!(at_rest_check(&cvk, Some(Role::Cvk)).unwrap().key_usage, KeyUsage::Cvk);
        assert_eq!(at_rest_kcv(&at_rest_check(&cvk, None).unwrap()), Some(kcv.clone()));
        let e = at_rest_check(&cvk, Some(Role::Imk)).unwrap_err();
        assert_eq!(
            e,
            "the key's block says usage C0 (card verification key); this operation needs an EMV issuer master key (E0-E6)"
        );
        assert!(at_rest_check(&block("D0000C0TC00N0000"), None).unwrap_err().contains("key context 1"));
        let lying = WrappedKey { alg: KeyAlg::Aes128, ..cvk.clone() };
        assert!(at_rest_check(&lying, None).unwrap_err().contains("the record says AES128"));
        for (role, usage, ok) in [
            (Role::Transport, KeyUsage::KeyEncryption, true),
            (Role::Transport, KeyUsage::PinEncryption, false),
            (Role::PinTarget, KeyUsage::DataEncryption, true),
            (Role::PinKey, KeyUsage::KeyEncryption, false),
            (Role::Kbpk, KeyUsage::Kbpk, true),
            (Role::Data, KeyUsage::KeyEncryption, false),
            (Role::Hmac, KeyUsage::Hmac, true),
            (Role::Pvk, KeyUsage::PinVerificationIbm3624, true),
        ] {
            assert_eq!(role.allows(usage), ok, "{role:?} {usage:?}");
        }
        use tr31::KeyFunction as F;
        assert!(ModeOfUse::DeriveKeys.allows(F::Derive));
        assert!(!ModeOfUse::DeriveKeys.allows(F::Encrypt));
        assert!(!ModeOfUse::GenerateVerify.allows(F::Decrypt));
        assert!(ModeOfUse::EncryptOnly.allows(F::Wrap));
        assert!(!ModeOfUse::EncryptOnly.allows(F::Unwrap));
    }

    #[test]
    fn key_algorithms() {
        assert_eq!(key_alg_of(Algorithm::Tdes, 24).unwrap(), KeyAlg::Des3);
        assert_eq!(key_alg_of(Algorithm::Hmac, 32).unwrap(), KeyAlg::HmacSha256);
        assert!(key_alg_of(Algorithm::Hmac, 20).unwrap_err().contains("20-byte algorithm H"));
        assert!(key_alg_of(Algorithm::Tdes, 8).is_err());
    }
}
