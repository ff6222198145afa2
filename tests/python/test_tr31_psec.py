"""TR-31 key blocks: hsm-sim's vendor mechanisms against psec, a reference we did not write.

Through python-pkcs11 against libquill_hsm_sim.so (QUILL_HSM_MODULE), on an initialised token
labelled `t` with user PIN 1234 (tests/third_party/30_tr31_psec.sh makes one):

  (a) the module wraps (CKM_QUILL_TR31_WRAP, 0xD1550060) and psec.tr31.unwrap reads the block:
      same key bytes, same header fields and optional blocks;
  (b) psec.tr31.wrap makes the block and the module unwraps it (CKM_QUILL_TR31_UNWRAP,
      0xD1550061): the new key's CKA_CHECK_VALUE, an encryption of zeros where the mode of use
      allows encryption, and CKA_VALUE where the block allows export all match the clear key.

Versions B and D, 2-/3-key TDES and AES-128/192/256 KBPKs, TDES and AES keys of every length,
random headers and optional blocks; every key is a TEST key made up here (labels say so). Cases
come from a seeded generator: QUILL_TR31_SEED repeats a run, QUILL_TR31_CASES sets the number of
cases per version and direction (default 30). Prints one line per check and
`tr31-psec: N passed, M failed`; exits 1 on any failure.
"""

import os
import random
import sys
import traceback
import warnings
from importlib.metadata import version

# psec and the reference KCVs use two-key TripleDES through cryptography, which warns on every call.
warnings.filterwarnings("ignore", message=".*TripleDES.*")

import pkcs11  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass  # noqa: E402
from psec import tr31  # noqa: E402

try:  # cryptography >= 43 keeps TripleDES here; older releases only in algorithms
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES  # noqa: E402
except ImportError:  # pragma: no cover
    TripleDES = algorithms.TripleDES

TOKEN_LABEL = "t"
USER_PIN = "1234"


def vendor_mechanism(value: int, name: str) -> Mechanism:
    """A `Mechanism` for a vendor-defined number (python-pkcs11 only accepts `Mechanism` members)."""
    m = int.__new__(Mechanism, value)
    m._name_ = name
    m._value_ = value
    return m


CKM_QUILL_TR31_WRAP = vendor_mechanism(0xD1550060, "QUILL_TR31_WRAP")
CKM_QUILL_TR31_UNWRAP = vendor_mechanism(0xD1550061, "QUILL_TR31_UNWRAP")

# Key usages with the modes of use hsm-sim and TR-31:2018 allow them (N is allowed with all).
TDES_USAGES = {
    "P0": "BDE", "K0": "BDE", "K1": "BDE", "D0": "BDE", "D2": "BDE", "M1": "CGV", "M3": "CGV",
    "M6": "CGV", "C0": "CGV", "V1": "CGV", "V2": "CGV", "E0": "X", "E2": "X", "E5": "X", "B0": "X",
}
AES_USAGES = {k: v for k, v in TDES_USAGES.items()}
# PKCS#11 usages asked for the unwrapped key, per mode of use: what the mode allows, within
# hsm-sim's key separation policy (hsm-sim/README.md "Key hygiene": never wrap/unwrap together with
# encrypt/decrypt), so the data role where a mode allows both.
MODE_FLAGS = {
    "B": MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
    "C": MechanismFlag.SIGN | MechanismFlag.VERIFY,
    "D": MechanismFlag.DECRYPT,
    "E": MechanismFlag.ENCRYPT,
    "G": MechanismFlag.SIGN,
    "V": MechanismFlag.VERIFY,
    "X": MechanismFlag.DERIVE,
    "N": MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.SIGN | MechanismFlag.VERIFY
    | MechanismFlag.DERIVE,
}
USAGE_ATTRS = [
    (Attribute.ENCRYPT, MechanismFlag.ENCRYPT), (Attribute.DECRYPT, MechanismFlag.DECRYPT),
    (Attribute.SIGN, MechanismFlag.SIGN), (Attribute.VERIFY, MechanismFlag.VERIFY),
    (Attribute.WRAP, MechanismFlag.WRAP), (Attribute.UNWRAP, MechanismFlag.UNWRAP),
    (Attribute.DERIVE, MechanismFlag.DERIVE),
]


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


def reference_kcv(algorithm: str, key: bytes) -> bytes:
    """KCV computed by `cryptography` (not by the module, not by psec): first 3 bytes of E(key, 0)."""
    if algorithm == "A":
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return (enc.update(bytes(16)) + enc.finalize())[:3]
    enc = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return (enc.update(bytes(8)) + enc.finalize())[:3]


def key_type_of(algorithm: str, length: int) -> KeyType:
    if algorithm == "A":
        return KeyType.AES
    return KeyType.DES2 if length == 16 else KeyType.DES3


class Case:
    """One random case: KBPK, key, header template and the optional blocks in it."""

    def __init__(self, rng: random.Random, version_id: str, n: int):
        self.version_id = version_id
        if version_id == "B":
            self.kbpk_type = rng.choice([KeyType.DES2, KeyType.DES3])
            self.kbpk = rng.randbytes(16 if self.kbpk_type == KeyType.DES2 else 24)
            # A key no stronger than the KBPK (hsm-sim refuses a weaker KBPK).
            self.algorithm = "T"
            key_len = rng.choice([16, 24]) if len(self.kbpk) == 24 else 16
        else:
            self.kbpk_type = KeyType.AES
            self.kbpk = rng.randbytes(rng.choice([16, 24, 32]))
            self.algorithm = rng.choice("TA")
            if self.algorithm == "A":
                key_len = rng.choice([n for n in (16, 24, 32) if n <= len(self.kbpk)])
            else:
                key_len = rng.choice([16, 24])
        self.key = rng.randbytes(key_len)
        self.key_type = key_type_of(self.algorithm, key_len)
        usages = TDES_USAGES if self.algorithm == "T" else AES_USAGES
        self.usage = rng.choice(sorted(usages))
        self.mode = rng.choice(usages[self.usage] + "N")
        self.key_version = rng.choice(["00", "00", "12", "A1", "c1", "99"])
        self.exportability = rng.choice("EESN")
        self.blocks = {}
        if rng.random() < 0.5:
            self.blocks["KS"] = rng.randbytes(rng.choice([5, 8, 10])).hex().upper()
        if rng.random() < 0.3:
            self.blocks["TS"] = "20240229235959Z"
        if rng.random() < 0.2:
            self.blocks["KV"] = "0100"
        if rng.random() < 0.1:
            self.blocks["T9"] = "".join(rng.choice("ABCDEFGHIJ0123456789 -") for _ in range(300))
        body = "".join(
            bid + (f"{len(d) + 4:02X}" if len(d) + 4 <= 255 else f"0002{len(d) + 10:04X}") + d
            for bid, d in self.blocks.items()
        )
        self.header = (
            f"{version_id}0000{self.usage}{self.algorithm}{self.mode}{self.key_version}"
            f"{self.exportability}{len(self.blocks):02d}00{body}"
        )
        self.label = f"TEST tr31 {version_id} #{n}"

    def describe(self) -> str:
        kbpk = {KeyType.DES2: "DES2", KeyType.DES3: "DES3", KeyType.AES: f"AES-{len(self.kbpk) * 8}"}[self.kbpk_type]
        blocks = ",".join(self.blocks) or "no blocks"
        return f"{kbpk} KBPK, {len(self.key)}-byte {self.algorithm} key, {self.header[5:16]} {blocks}"


def create_kbpk(session, case: Case):
    return session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: case.kbpk_type,
        Attribute.VALUE: case.kbpk,
        Attribute.LABEL: f"{case.label} KBPK",
        Attribute.TOKEN: False,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.WRAP: True,
        Attribute.UNWRAP: True,
    })


def create_key(session, case: Case):
    return session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: case.key_type,
        Attribute.VALUE: case.key,
        Attribute.LABEL: f"{case.label} key",
        Attribute.TOKEN: False,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: True,
        Attribute.ENCRYPT: True,
    })


def module_wraps_psec_unwraps(session, case: Case):
    """(a): C_WrapKey in the module, psec.tr31.unwrap outside it."""
    def run():
        kbpk = create_kbpk(session, case)
        key = create_key(session, case)
        block = kbpk.wrap_key(key, mechanism=CKM_QUILL_TR31_WRAP, mechanism_param=case.header.encode()).decode()
        header, clear = tr31.unwrap(case.kbpk, block)
        expect(clear, case.key, "key bytes psec read out of the module's block")
        expect(header.version_id, case.version_id, "version id")
        expect(header.key_usage, case.usage, "key usage")
        expect(header.algorithm, case.algorithm, "algorithm")
        expect(header.mode_of_use, case.mode, "mode of use")
        expect(header.version_num, case.key_version, "key version number")
        expect(header.exportability, case.exportability, "exportability")
        expect(dict(header.blocks), case.blocks, "optional blocks (psec drops PB)")
        expect(int(block[1:5]), len(block), "length field")
        return f"{len(block)} chars, psec reads the key and header"
    return run


def psec_wraps_module_unwraps(session, case: Case):
    """(b): psec.tr31.wrap outside the module, C_UnwrapKey in it."""
    def run():
        kbpk = create_kbpk(session, case)
        block = tr31.wrap(case.kbpk, case.header, case.key)
        template = {Attribute.SENSITIVE: False, Attribute.LABEL: f"{case.label} unwrapped"}
        exportable = case.exportability != "N"
        if exportable:
            template[Attribute.EXTRACTABLE] = True
        capabilities = MODE_FLAGS[case.mode]
        new = kbpk.unwrap_key(
            ObjectClass.SECRET_KEY, case.key_type, block.encode(), mechanism=CKM_QUILL_TR31_UNWRAP,
            capabilities=capabilities, template=template,
        )
        want = reference_kcv(case.algorithm, case.key)
        expect(bytes(new[Attribute.CHECK_VALUE]), want, "CKA_CHECK_VALUE against the clear key's KCV")
        expect(new[Attribute.VALUE_LEN], len(case.key), "CKA_VALUE_LEN")
        for attr, flag in USAGE_ATTRS:
            expect(bool(new[attr]), bool(capabilities & flag), f"{attr.name} for mode {case.mode}")
        done = ["CKA_CHECK_VALUE"]
        if capabilities & MechanismFlag.ENCRYPT:
            mech = Mechanism.AES_ECB if case.algorithm == "A" else Mechanism.DES3_ECB
            zeros = bytes(16 if case.algorithm == "A" else 8)
            expect(new.encrypt(zeros, mechanism=mech)[:3], want, "encryption of zeros")
            done.append("E(0)")
        if exportable:
            expect(bytes(new[Attribute.VALUE]), case.key, "CKA_VALUE")
            done.append("CKA_VALUE")
        else:
            expect(bool(new[Attribute.EXTRACTABLE]), False, "CKA_EXTRACTABLE for exportability N")
        return f"{len(block)} chars, {' + '.join(done)} = {want.hex().upper()}"
    return run


def main() -> int:
    module = os.environ.get("QUILL_HSM_MODULE")
    if not module:
        print("QUILL_HSM_MODULE is not set", file=sys.stderr)
        return 2
    seed = int(os.environ.get("QUILL_TR31_SEED") or random.SystemRandom().randrange(1 << 32))
    count = int(os.environ.get("QUILL_TR31_CASES", "30"))
    rng = random.Random(seed)
    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=TOKEN_LABEL)
    r = Results()
    print(f"psec {version('psec')}, python-pkcs11 {version('python-pkcs11')} against {module}; "
          f"QUILL_TR31_SEED={seed}, {count} cases per version and direction")

    # The reference agrees with published blocks before it judges anything: TR-31:2018 A.7.2.2
    # (version B) and A.7.4 (version D), as reproduced in openemv/tr31 test/tr31_decrypt_test.c.
    published = [
        ("DD7515F2BFC17F85CE48F3CA25CB21F6",
         "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E"),
        ("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
         "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34"),
    ]
    for kbpk_hex, block in published:
        r.check(f"psec reads the TR-31:2018 example {block[:16]}",
                lambda k=kbpk_hex, b=block: expect(tr31.unwrap(bytes.fromhex(k), b)[1].hex().upper(),
                                                   "3F419E1CB7079442AA37474C2EFBF8B8", "key"))

    with token.open(user_pin=USER_PIN, rw=True) as session:
        for version_id in "BD":
            for n in range(count):
                case = Case(rng, version_id, n)
                r.check(f"(a) module wrap -> psec unwrap, v{version_id} #{n}: {case.describe()}",
                        module_wraps_psec_unwraps(session, case))
            for n in range(count):
                case = Case(rng, version_id, count + n)
                r.check(f"(b) psec wrap -> module unwrap, v{version_id} #{n}: {case.describe()}",
                        psec_wraps_module_unwraps(session, case))

        # The module refuses what psec made when it was altered, and a template that contradicts it.
        case = Case(random.Random(seed ^ 1), "B", 999)
        case.mode, case.usage, case.exportability = "B", "K0", "S"
        case.header = f"B0000K0{case.algorithm}B00S0000"

        def altered():
            kbpk = create_kbpk(session, case)
            block = tr31.wrap(case.kbpk, case.header, case.key)
            bad = block[:20] + ("0" if block[20] != "0" else "1") + block[21:]
            try:
                kbpk.unwrap_key(ObjectClass.SECRET_KEY, case.key_type, bad.encode(),
                                mechanism=CKM_QUILL_TR31_UNWRAP, capabilities=MODE_FLAGS["B"])
            except pkcs11.WrappedKeyInvalid:
                return "CKR_WRAPPED_KEY_INVALID"
            raise AssertionError("an altered block was accepted")

        def contradicted():
            kbpk = create_kbpk(session, case)
            block = tr31.wrap(case.kbpk, case.header, case.key)
            try:
                kbpk.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, block.encode(),
                                mechanism=CKM_QUILL_TR31_UNWRAP, capabilities=MODE_FLAGS["B"])
            except pkcs11.TemplateInconsistent:
                return "CKR_TEMPLATE_INCONSISTENT"
            raise AssertionError("a TDES block was imported as an AES key")

        r.check("an altered psec block is refused", altered)
        r.check("a psec TDES block with a CKK_AES template is refused", contradicted)

    print(f"tr31-psec: {r.passed} passed, {r.failed} failed (QUILL_TR31_SEED={seed})")
    return 0 if r.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
