"""python-pkcs11 against libquill_hsm_sim.so, with pyemv and psec as the references.

Expects an initialised token labelled `t` with user PIN 1234 (tests/third_party/20_python_pkcs11.sh
makes one with pkcs11-tool: python-pkcs11 has no C_InitToken) and the module path in
QUILL_HSM_MODULE. Prints one line per check and `python-pkcs11: N passed, M failed`; exits 1 on any
failure.
"""

import ctypes
import os
import struct
import sys
import traceback
import warnings
from importlib.metadata import version

# pyemv and psec use two-key TripleDES through cryptography, which warns on every call.
warnings.filterwarnings("ignore", message=".*TripleDES.*")

import pkcs11  # noqa: E402
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass  # noqa: E402
from psec import cvv as psec_cvv  # noqa: E402
from pyemv import kd, tools  # noqa: E402

TOKEN_LABEL = "t"
USER_PIN = "1234"

# EMV reference vectors (shared/reference/emv.md §6: #1, #3, #8, #9).
IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PAN = "12345678901234567"
PSN = "01"
MK_OPTION_A = bytes.fromhex("73AD54688CEF2934B0979857E3C719F1")
MK_OPTION_B = bytes.fromhex("AD406D7F6D7570916D75E5DCAB8CF737")
CVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
CVV_VECTORS = [("4123456789012345", "8701", "101", "561"), ("1234567890123456", "9912", "220", "170")]


def vendor_mechanism(value: int, name: str) -> Mechanism:
    """A `Mechanism` for a vendor-defined number.

    python-pkcs11 only accepts `Mechanism` members; a pseudo-member with the vendor value passes
    its type check and goes to C_*Init as that number.
    """
    m = int.__new__(Mechanism, value)
    m._name_ = name
    m._value_ = value
    return m


CKM_QUILL_EMV_MK_OPTION_A = vendor_mechanism(0xD1550001, "QUILL_EMV_MK_OPTION_A")
CKM_QUILL_EMV_MK_OPTION_B = vendor_mechanism(0xD1550002, "QUILL_EMV_MK_OPTION_B")
CKM_QUILL_CVV = vendor_mechanism(0xD1550010, "QUILL_CVV")


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn):
        """Runs fn(); it returns a short detail string or raises (AssertionError or PKCS#11 error)."""
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3, file=sys.stdout)
            return
        self.passed += 1
        print(f"ok   {name}" + (f": {detail}" if detail else ""))


def expect(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: got {actual!r}, expected {expected!r}")


def kcv_of(session, key) -> bytes:
    """The 3-byte KCV of a DES key: 3DES-ECB of 8 zero bytes, computed inside the module."""
    return key.encrypt(bytes(8), mechanism=Mechanism.DES3_ECB)[:3]


def check_value_of(key) -> bytes | None:
    """CKA_CHECK_VALUE when the module offers it, else None."""
    try:
        return bytes(key[Attribute.CHECK_VALUE])
    except (pkcs11.AttributeTypeInvalid, pkcs11.AttributeSensitive):
        return None


def import_des2(session, value: bytes, label: str, **usage):
    template = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.DES2,
        Attribute.VALUE: value,
        Attribute.LABEL: label,
        Attribute.TOKEN: False,
        Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: True,
        Attribute.ENCRYPT: True,
    }
    template.update({getattr(Attribute, k.upper()): v for k, v in usage.items()})
    return session.create_object(template)


def key_derivation_string_data(data: bytes) -> tuple[bytes, ctypes.Array]:
    """CK_KEY_DERIVATION_STRING_DATA {pData, ulLen} as raw bytes, plus the buffer it points at.

    python-pkcs11 passes `bytes` parameters through as pParameter, so the standard structure for
    DES3_ECB_ENCRYPT_DATA is built here; the caller keeps the buffer alive across the call.
    """
    buf = ctypes.create_string_buffer(data, len(data))
    return struct.pack("@PL", ctypes.addressof(buf), len(data)), buf


def emv_mk_param(pan: str, psn: str) -> bytes:
    """The packed vendor parameter `digits(pan) ‖ psn[2]` (hsm-sim/README.md)."""
    return bytes([len(pan)]) + pan.encode() + psn.encode()


def option_a_input(pan: str, psn: str) -> bytes:
    """Y ‖ (Y xor FF..): Y = rightmost 16 digits of PAN ‖ PSN as BCD (EMV Book 2 A1.4.1)."""
    y = bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))
    return y + bytes(b ^ 0xFF for b in y)


def main() -> int:
    module = os.environ.get("QUILL_HSM_MODULE")
    if not module:
        print("QUILL_HSM_MODULE is not set", file=sys.stderr)
        return 2
    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=TOKEN_LABEL)
    r = Results()
    print(f"python-pkcs11 {version('python-pkcs11')} against {module} ({lib.manufacturer_id}), token {token.label!r}")

    # The references agree with the published vectors before they judge anything.
    r.check("pyemv Option A reference = emv.md vector #1",
            lambda: expect(kd.derive_icc_mk_a(IMK, PAN, PSN), MK_OPTION_A, "pyemv MK"))
    r.check("pyemv Option B reference = emv.md vector #3",
            lambda: expect(kd.derive_icc_mk_b(IMK, PAN, PSN), MK_OPTION_B, "pyemv MK"))

    with token.open(user_pin=USER_PIN, rw=True) as session:
        # RSA key pairs at an EMV issuer-key size with e = 3; checked by raw modpow outside the module.
        moduli = []

        def rsa_keypair():
            # Explicit capabilities: python-pkcs11's default (encrypt, sign and wrap) mixes roles
            # that hsm-sim's key separation policy keeps apart (hsm-sim/README.md "Key hygiene").
            pub, priv = session.generate_keypair(
                KeyType.RSA, 1984, store=False, capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={Attribute.PUBLIC_EXPONENT: b"\x03"},
            )
            n = int.from_bytes(pub[Attribute.MODULUS], "big")
            e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
            expect(n.bit_length(), 1984, "modulus bits")
            expect(e, 3, "public exponent")
            expect(priv[Attribute.MODULUS], pub[Attribute.MODULUS], "private key modulus")
            block = b"\x00\x6a" + os.urandom(1984 // 8 - 3) + b"\xbc"
            sig = priv.sign(block, mechanism=Mechanism.RSA_X_509)
            expect(pow(int.from_bytes(sig, "big"), e, n), int.from_bytes(block, "big"), "sig^e mod n")
            moduli.append(n)
            return f"n {n.bit_length()} bits, e {e}, RSA_X_509 signature recovers the block"

        r.check("RSA 1984/e=3 key pair #1", rsa_keypair)
        r.check("RSA 1984/e=3 key pair #2", rsa_keypair)
        r.check("the two moduli differ", lambda: expect(len(set(moduli)), 2, "distinct moduli"))

        imk = import_des2(session, IMK, "imk", derive=True)
        expected_kcv = tools.key_check_digits(MK_OPTION_A, 3)

        r.check("imported IMK has the known KCV",
                lambda: expect(kcv_of(session, imk), tools.key_check_digits(IMK, 3), "IMK KCV"))

        def derive_encrypt_data():
            param, buf = key_derivation_string_data(option_a_input(PAN, PSN))
            mk = imk.derive_key(
                KeyType.DES2, 128, mechanism=Mechanism.DES3_ECB_ENCRYPT_DATA, mechanism_param=param,
                capabilities=MechanismFlag.ENCRYPT,
                template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False, Attribute.ENCRYPT: True},
            )
            del buf
            kcv = kcv_of(session, mk)
            expect(kcv, expected_kcv, "KCV of DES3_ECB_ENCRYPT_DATA(IMK, Y‖~Y)")
            cv = check_value_of(mk)
            if cv is not None:
                expect(cv, expected_kcv, "CKA_CHECK_VALUE")
            expect(tools.adjust_key_parity(bytes(mk[Attribute.VALUE])), MK_OPTION_A, "value after odd parity")
            return f"KCV {kcv.hex().upper()} (CKA_CHECK_VALUE {'matches' if cv else 'not offered'})"

        r.check("DES3_ECB_ENCRYPT_DATA(IMK, Y‖Y^FF) = pyemv Option A", derive_encrypt_data)

        def derive_vendor(mechanism, reference):
            def run():
                mk = imk.derive_key(
                    KeyType.DES2, 128, mechanism=mechanism, mechanism_param=emv_mk_param(PAN, PSN),
                    capabilities=MechanismFlag.ENCRYPT,
                    template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False, Attribute.ENCRYPT: True},
                )
                kcv = kcv_of(session, mk)
                expect(kcv, tools.key_check_digits(reference, 3), "KCV")
                expect(bytes(mk[Attribute.VALUE]), reference, "ICC MK (odd parity)")
                return f"KCV {kcv.hex().upper()}, value = pyemv"
            return run

        r.check("vendor 0xD1550001 (Option A) = pyemv kd.derive_icc_mk_a",
                derive_vendor(CKM_QUILL_EMV_MK_OPTION_A, kd.derive_icc_mk_a(IMK, PAN, PSN)))
        r.check("vendor 0xD1550002 (Option B) = pyemv kd.derive_icc_mk_b",
                derive_vendor(CKM_QUILL_EMV_MK_OPTION_B, kd.derive_icc_mk_b(IMK, PAN, PSN)))

        cvk = import_des2(session, CVK, "cvk", sign=True)
        for pan, yymm, sc, want in CVV_VECTORS:
            def cvv(pan=pan, yymm=yymm, sc=sc, want=want):
                got = cvk.sign((pan + yymm + sc).encode(), mechanism=CKM_QUILL_CVV).decode()
                expect(got, want, "CVV")
                ref = psec_cvv.generate_cvv(CVK, pan, yymm, sc)
                # psec skips the second decimalisation pass (emv.md §7): only a 3-digit answer counts.
                if len(ref) == 3:
                    expect(got, ref, "psec generate_cvv")
                return f"{got} (psec {ref})"

            r.check(f"vendor 0xD1550010 CVV PAN {pan} {yymm} SC {sc} = {want}", cvv)

        # EC (issue 14): a P-256 key pair, ECDSA-SHA256 verified by `cryptography` with the public
        # key python-pkcs11 encodes from CKA_EC_PARAMS/CKA_EC_POINT, and ECDH both ways.
        def ec_p256():
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
            from pkcs11 import KDF
            from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            pub, priv = params.generate_keypair(store=False, private_template={Attribute.DERIVE: True})
            data = b"Quill python-pkcs11 ECDSA"
            sig = priv.sign(data, mechanism=Mechanism.ECDSA_SHA256)
            expect(len(sig), 64, "r || s length")
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            theirs = serialization.load_der_public_key(encode_ec_public_key(pub))
            theirs.verify(der, data, ec.ECDSA(hashes.SHA256()))
            peer = ec.generate_private_key(ec.SECP256R1())
            peer_point = peer.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            secret = priv.derive_key(
                KeyType.GENERIC_SECRET, 256, store=False,
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
                mechanism_param=(KDF.NULL, None, peer_point))
            expect(secret[Attribute.VALUE], peer.exchange(ec.ECDH(), theirs), "ECDH shared secret")
            return "cryptography verifies the signature and computes the same ECDH secret"

        r.check("EC P-256: ECDSA_SHA256 and ECDH1_DERIVE against cryptography", ec_p256)

    print(f"python-pkcs11: {r.passed} passed, {r.failed} failed")
    return 0 if r.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
