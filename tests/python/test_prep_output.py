"""The prep engine's real output against pyemv, psec and plain-integer RSA: references we did not write.

Reads one output directory of `quill prep run` (cards.jsonl, pin-mailers.jsonl, carriers.jsonl),
the profile and the input batch it was made from, the clear TEST keys
(prep/test-keys/test-keys.toml) and the TEST CA private key (prep/test-keys/quill-TEST-ca-1984.pem,
only its public half is used), and checks for every card:

  (a) streams: header fields, SHA-256 over everything before the trailer, HMAC-SHA-256 with
      MAC-OUTPUT-TEST over the digest, record counts; the cards match the input records; the
      mailer and carrier records follow the cards in order, with matching references;
  (b) ICC master keys: DGI 8000 decrypted under TK-DEK-TEST equals pyemv.kd Option A/B from the
      IMKs (keys.ac, smi, smc, extra in name order; CAP: cap.imk), DGI 9000 their KCVs; an ARQC
      from pyemv.cvn (issuer side, from the IMKs) equals the one computed with pyemv.ac/pyemv.kd
      from the decrypted MK-AC (card side); e-purse DGI 8001/9001 from the purse master keys;
  (c) tracks 1/2 and tag 57 rebuilt digit by digit: CVV (track service code), iCVV (999), CVV2
      (000, carrier) with our own CVV where psec's lacks the second decimalisation pass; the PIN
      from the mailer block (psec ISO 0 / ISO 4) gives the track's PVV (psec) or IBM 3624 offset
      (psec); DGI 8010 decrypts to the same PIN in ISO 9564 format 2; 9010 holds the try limit;
  (d) certificates with Python integers (pow): 90 recovered with the TEST CA key (RID from the
      AID, index 8F), 93 (SDA) or 9F46 (DDA) with the recovered issuer key, hashes over the static
      data walked from the AFL, p*q from DGIs 8205/8204 equals the certified ICC modulus, the CRT
      parts sign; a changed certificate byte must fail (negative control);
  (e) embossing lines, masked PAN, carrier and mailer fields.

A check that cannot run (missing DGI, wrong length, exception) is a failure. Prints one line per
failed check and `N checks passed`; exits 1 on any failure.

Usage: test_prep_output.py --profile P.toml --input SAMPLE --out DIR [-v: print passed checks too]
"""

import argparse
import calendar
import csv
import datetime
import hashlib
import hmac
import json
import sys
import tomllib
import traceback
import warnings
from pathlib import Path

# psec and pyemv use TripleDES (and single DES as 8-byte TripleDES) from cryptography, which warns.
warnings.filterwarnings("ignore", message=".*TripleDES.*")

from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: E402
from psec import cvv as psec_cvv  # noqa: E402
from psec import des as psec_des  # noqa: E402
from psec import pin as psec_pin  # noqa: E402
from psec import pinblock as psec_pinblock  # noqa: E402
from pyemv import ac as emv_ac  # noqa: E402
from pyemv import cvn as emv_cvn  # noqa: E402
from pyemv import kd as emv_kd  # noqa: E402
from pyemv import sm as emv_sm  # noqa: E402
from pyemv import tools as emv_tools  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STREAMS = [("cards", "cards.jsonl"), ("pin-mailers", "pin-mailers.jsonl"), ("carriers", "carriers.jsonl")]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


class Report:
    def __init__(self, verbose=False):
        self.passed = 0
        self.failed = 0
        self.verbose = verbose

    def check(self, ok, where, what, detail=None):
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"ok   {where}: {what}")
        else:
            self.failed += 1
            print(f"FAIL {where}: {what}" + (f" ({detail})" if detail else ""), flush=True)
        return bool(ok)

    def eq(self, got, want, where, what):
        """got == want; the failure line shows both (hex for bytes)."""
        show = lambda v: v.hex().upper() if isinstance(v, (bytes, bytearray)) else repr(v)  # noqa: E731
        return self.check(got == want, where, what, None if got == want else f"expected {show(want)}, got {show(got)}")

    def run(self, where, what, fn, *args):
        """Run a group of checks; an exception is a failure of the group, never a skip."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - every error is reported as a failed check
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self.check(False, where, f"{what}: could not run", f"{type(e).__name__}: {e} at line {tb.lineno}")
            return None


# ---------------------------------------------------------------------------------------------
# Small primitives (DES through psec; the rest plain Python)
# ---------------------------------------------------------------------------------------------


def tdes_dec(key, data):
    if len(data) == 0 or len(data) % 8:
        raise ValueError(f"ciphertext of {len(data)} bytes is not a whole number of DES blocks")
    return psec_des.decrypt_tdes_ecb(key, data)


def xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def bcd(digits):
    """Numeric text as BCD, an odd length with a leading 0."""
    return bytes.fromhex(digits if len(digits) % 2 == 0 else "0" + digits)


def cn(digits):
    """Compressed numeric: F-padded on the right."""
    return bytes.fromhex(digits if len(digits) % 2 == 0 else digits + "F")


def kcv3(key):
    return emv_tools.key_check_digits(key, 3)


def cvv_own(cvk, pan, yymm, sc):
    """emv.md §4.2, both decimalisation passes (psec 1.3.0 skips the second)."""
    block = (pan + yymm + sc).ljust(32, "0")
    if len(block) != 32:
        raise ValueError("PAN + expiry + service code longer than 32 digits")
    a = cvk[:8]
    r = psec_des.encrypt_tdes_ecb(a, bytes.fromhex(block[:16]))  # single DES: 8-byte key
    r = xor(r, bytes.fromhex(block[16:]))
    r = psec_des.encrypt_tdes_ecb(cvk, r)
    h = r.hex().upper()
    digits = [c for c in h if c.isdigit()] + [str(int(c, 16) - 10) for c in h if not c.isdigit()]
    return "".join(digits[:3])


def unpad_m2(data):
    """Strip ISO/IEC 9797-1 padding method 2 (`80 00..`, 1 to 8 bytes)."""
    i = len(data)
    while i > 0 and data[i - 1] == 0:
        i -= 1
    if i == 0 or data[i - 1] != 0x80:
        raise ValueError("no ISO 9797-1 method 2 padding (80 00..)")
    if not 1 <= len(data) - (i - 1) <= 8:
        raise ValueError(f"{len(data) - (i - 1)} padding bytes; method 2 adds 1 to 8")
    return data[: i - 1]


def tlv_parse(data):
    """BER-TLV (EMV subset): ordered list of (tag hex, value); anything left over is an error."""
    out, i, n = [], 0, len(data)
    while i < n:
        t0 = i
        first = data[i]
        i += 1
        if first & 0x1F == 0x1F:
            while True:
                if i >= n:
                    raise ValueError(f"tag cut short at offset {t0}")
                b = data[i]
                i += 1
                if not b & 0x80:
                    break
        tag = data[t0:i].hex().upper()
        if i >= n:
            raise ValueError(f"tag {tag}: no length")
        ln = data[i]
        i += 1
        if ln & 0x80:
            k = ln & 0x7F
            if k == 0 or k > 3 or i + k > n:
                raise ValueError(f"tag {tag}: bad length form")
            ln = int.from_bytes(data[i : i + k], "big")
            i += k
        if i + ln > n:
            raise ValueError(f"tag {tag}: length {ln} runs past the end")
        out.append((tag, data[i : i + ln]))
        i += ln
    return out


def is_weak(pin):
    d = [int(c) for c in pin]
    steps = {d[i + 1] - d[i] for i in range(len(d) - 1)}
    return steps in ({0}, {1}, {-1})


def group_pan(pan):
    if len(pan) == 15:
        return f"{pan[:4]} {pan[4:10]} {pan[10:]}"
    return " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))


def i2b(x, n):
    return x.to_bytes(n, "big")


def b2i(b):
    return int.from_bytes(b, "big")


def rsa_recover(sig, n, e, nlen):
    if len(sig) != nlen:
        raise ValueError(f"{len(sig)} bytes, the key is {nlen}")
    s = b2i(sig)
    if s >= n:
        raise ValueError("signature not below the modulus")
    return i2b(pow(s, e, n), nlen)


def exp_bytes(e):
    return {3: b"\x03", 65537: b"\x01\x00\x01"}[e]


# ---------------------------------------------------------------------------------------------
# Inputs: keys, profile, input batch
# ---------------------------------------------------------------------------------------------


class TestKeys:
    def __init__(self, toml_path, pem_path):
        doc = tomllib.loads(Path(toml_path).read_text())
        self.keys = {k["label"]: k for k in doc["key"]}
        self.issuers = {i["label"]: i for i in doc.get("issuer", [])}
        text = Path(pem_path).read_text()
        ca = load_pem_private_key(text[text.index("-----BEGIN") :].encode(), None)
        nums = ca.public_key().public_numbers()
        self.ca_n, self.ca_e = nums.n, nums.e
        self.ca_len = (nums.n.bit_length() + 7) // 8

    def value(self, label):
        return bytes.fromhex(self.keys[label]["value"])

    def kcv(self, label):
        return self.keys[label]["kcv"].upper()


def self_test(R, keys):
    """Our own helpers against published answers (emv.md §6), and the fixture's KCVs."""
    w = "self-test"
    k8 = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    R.eq(cvv_own(k8, "4123456789012345", "8701", "101"), "561", w, "own CVV, KAT 8")
    R.eq(cvv_own(k8, "1234567890123456", "9912", "220"), "170", w, "own CVV, KAT 9 (psec doctest)")
    kc = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
    R.eq(cvv_own(kc, "4761730000304750", "3012", "201"), "105", w, "own CVV, second decimalisation pass")
    R.eq(psec_cvv.generate_cvv(kc, "4761730000304750", "3012", "201"), "10", w, "psec CVV caveat still present")
    R.eq(psec_pin.generate_visa_pvv(k8, "3", "4524", "1122334455667788"), "4021", w, "psec PVV, KAT 10")
    R.eq(kcv3(bytes.fromhex("11223344006677881122334455007788")), bytes.fromhex("97DCB0"), w, "pyemv KCV, KAT 18")
    R.check(not is_weak("1357") and is_weak("1111") and is_weak("4321") and is_weak("3456"), w, "weak-PIN rule")
    R.eq(tlv_parse(bytes.fromhex("5A0847617390010100109F3403420300")),
         [("5A", bytes.fromhex("4761739001010010")), ("9F34", bytes.fromhex("420300"))], w, "TLV parser")
    R.eq(unpad_m2(bytes.fromhex("0102038000000000")), bytes.fromhex("010203"), w, "method 2 unpadding")
    for label, k in keys.keys.items():
        v = bytes.fromhex(k["value"])
        if k["alg"].startswith("DES"):
            R.eq(psec_des.generate_kcv(v, 3).hex().upper(), k["kcv"].upper(), w, f"fixture KCV of {label}")
        elif k["alg"] == "HMAC_SHA256":
            R.eq(hmac.new(v, bytes(32), hashlib.sha256).hexdigest().upper()[:6], k["kcv"].upper(), w,
                 f"fixture KCV of {label}")
    R.check(keys.ca_e == 3 and keys.ca_len == 248, w, "TEST CA key is RSA-1984, e=3",
            f"e={keys.ca_e}, {keys.ca_len} bytes")


def read_input(profile, path):
    """Input records by 1-based physical line: {line: {kind or field name: text}}."""
    inp = profile["input"]
    enc = {"ascii": "ascii", "utf8": "utf-8", "latin1": "latin-1"}[inp.get("encoding", "ascii")]
    lines = Path(path).read_bytes().decode(enc).split("\n")
    fields = inp["fields"]
    out = {}
    titles = None
    for no, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if inp["format"] == "csv":
            cells = [c.strip() for c in next(csv.reader([line], delimiter=inp.get("delimiter", ",")))]
            if inp.get("header", True) and titles is None:
                titles = cells
                continue
            if inp.get("header", True):
                values = [cells[titles.index(f.get("column", f["name"]))] for f in fields]
            else:
                values = [cells[i] if i < len(cells) else "" for i in range(len(fields))]
        else:
            values = [line[f["start"] - 1 : f["start"] - 1 + f["length"]].strip() for f in fields]
        rec = {"fields": {}}
        for f, v in zip(fields, values, strict=True):
            if f["kind"] in ("digits", "text"):
                if v:
                    rec["fields"][f["name"]] = v
            else:
                rec[f["kind"]] = v
        out[no] = rec
    return out


# ---------------------------------------------------------------------------------------------
# (a) Streams
# ---------------------------------------------------------------------------------------------


def check_stream(R, out_dir, stream, fname, profile, keys):
    w = fname
    data = (out_dir / fname).read_bytes()
    R.check(data.endswith(b"\n"), w, "file ends with a complete line")
    lines = data.split(b"\n")[:-1]
    if not R.check(len(lines) >= 2, w, "header and trailer lines present", f"{len(lines)} lines"):
        return None
    header = json.loads(lines[0])
    trailer = json.loads(lines[-1])
    R.eq(header.get("format"), "quill-prep-output", w, "header format")
    R.eq(header.get("version"), 1, w, "header version")
    R.eq(header.get("stream"), stream, w, "header stream")
    R.eq(header.get("product"), profile["product"]["name"], w, "header product")
    R.eq(header.get("product_version"), profile["product"]["version"], w, "header product_version")
    R.eq(header.get("test_keys"), True, w, "header test_keys")
    mk = header.get("mac_key") or {}
    R.eq(mk.get("label"), "MAC-OUTPUT-TEST", w, "header MAC key label")
    R.eq(str(mk.get("kcv", "")).upper(), keys.kcv("MAC-OUTPUT-TEST"), w, "header MAC key KCV")
    end = trailer.get("end") or {}
    R.eq(sorted(trailer), ["end"], w, "trailer is {\"end\": ...}")
    digest = hashlib.sha256(data[: len(data) - len(lines[-1]) - 1]).digest()
    R.eq(str(end.get("sha256", "")).upper(), digest.hex().upper(), w, "trailer sha256 = SHA-256 of the bytes before it")
    mac = hmac.new(keys.value("MAC-OUTPUT-TEST"), digest, hashlib.sha256).hexdigest().upper()
    R.eq(str(end.get("mac", "")).upper(), mac, w, "trailer MAC = HMAC-SHA-256(MAC-OUTPUT-TEST, digest)")
    R.eq(end.get("records"), len(lines) - 2, w, "trailer record count")
    # Negative control: the same MAC over a digest with one bit changed must differ.
    bad = hmac.new(keys.value("MAC-OUTPUT-TEST"), bytes([digest[0] ^ 1]) + digest[1:], hashlib.sha256)
    R.check(bad.hexdigest().upper() != str(end.get("mac", "")).upper(), w, "negative control: changed digest, other MAC")
    return [json.loads(x) for x in lines[1:-1]]


# ---------------------------------------------------------------------------------------------
# Per card
# ---------------------------------------------------------------------------------------------


class Card:
    """What the checks of one card share."""

    def __init__(self, card, rec, profile, keys):
        self.card = card
        self.rec = rec
        self.profile = profile
        self.keys = keys
        self.pan = card["pan"]
        self.psn = card["psn"]
        self.yymm = card["expiry"]
        self.where = f"cards.jsonl card line {card['line']}"
        self.sc = rec.get("service_code") or ""
        self.pin = None
        self.pvv_or_offset = None
        self.cvv = self.icvv = None
        self.t1_dd = None
        self.t2_dd = None
        self.chip_t1_dd = None
        self.chip_t2 = None
        self.chip_t2_dd = None


def check_record_fields(R, c):
    w, rec = c.where, c.rec
    R.eq(c.pan, rec.get("pan"), w, "PAN = input record's")
    R.eq(c.psn, (rec.get("psn") or "0").zfill(2), w, "PSN = input record's (00 if empty)")
    R.eq(c.yymm, rec.get("expiry"), w, "expiry YYMM = input record's")


def check_pin(R, c):
    p = c.profile["pin"]
    w, k = c.where, c.keys
    m = c.card.get("mailer")
    if not R.check(m is not None, w, "card has a PIN-mailer record"):
        return
    fmt = p["mailer"]["block_format"]
    R.eq(m.get("format"), fmt, w, "mailer PIN block format")
    R.eq(m.get("key"), {"label": p["mailer"]["key"], "kcv": k.kcv(p["mailer"]["key"])}, w, "mailer key reference")
    block = bytes.fromhex(m["pin_block"])
    key = k.value(p["mailer"]["key"])
    if fmt == "iso0":
        R.eq(len(block), 8, w, "ISO 0 mailer block length")
        pin = psec_pinblock.decode_pinblock_iso_0(tdes_dec(key, block), c.pan)
    elif fmt == "iso3":
        pin = psec_pinblock.decode_pinblock_iso_3(tdes_dec(key, block), c.pan)
    elif fmt == "iso4":
        R.eq(len(block), 16, w, "ISO 4 mailer block length")
        pin = psec_pinblock.decipher_pinblock_iso_4(key, block, c.pan)
    else:
        raise ValueError(f"mailer block format {fmt}: no reference decoder here")
    c.pin = pin
    R.check(pin.isdigit() and len(pin) == p["length"], w, f"mailer PIN is {p['length']} digits", f"{len(pin)} characters")
    if p.get("exclude_weak", True):
        R.check(not is_weak(pin), w, "mailer PIN is not weak (all equal / straight run)")
    if p["method"] == "pvv":
        v = p["pvv"]
        c.pvv_or_offset = psec_pin.generate_visa_pvv(k.value(v["pvk"]), str(v["pvki"]), pin, c.pan)
    elif p["method"] == "ibm3624":
        v = p["ibm3624"]
        args = (k.value(v["pvk"]), v["decimalisation"])
        geo = (c.pan, v.get("validation_start", 4) - 1, v.get("validation_length", 12), v.get("pad", "F"))
        off = psec_pin.generate_ibm3624_offset(*args, pin, *geo)
        R.eq(psec_pin.generate_ibm3624_pin(*args, off, *geo), pin, w, "psec IBM 3624 PIN from the offset round-trips")
        c.pvv_or_offset = off


def cvv_ref(R, c, what, sc):
    cvk = c.keys.value(c.profile["mag_stripe"]["cvk"])
    own = cvv_own(cvk, c.pan, c.yymm, sc)
    ps = psec_cvv.generate_cvv(cvk, c.pan, c.yymm, sc)
    if len(ps) == 3:
        R.eq(own, ps, c.where, f"{what}: our CVV agrees with psec")
    else:  # psec stopped after the first pass: its digits must start ours
        R.check(own.startswith(ps), c.where, f"{what}: psec's first-pass digits start our CVV", f"psec {ps}, own {own}")
    return own


def dd_items(c, layout):
    items = []
    for it in layout["discretionary"]:
        if it == "pvki":
            items.append(("PVKI", str(c.profile["pin"]["pvv"]["pvki"])))
        elif it in ("pvv", "pin_offset"):
            if c.pvv_or_offset is None:
                raise ValueError(f"layout item {it}: no PIN to compute it from")
            items.append(("PVV" if it == "pvv" else "IBM 3624 offset", c.pvv_or_offset))
        elif it == "cvv":
            items.append(("CVV", c.cvv))
        elif it == "icvv":
            items.append(("iCVV", c.icvv))
        elif it.startswith("pad:"):
            items.append(("pad", it[4:]))
        else:
            raise ValueError(f"unknown discretionary item {it}")
    return items


def check_dd(R, c, what, dd, items):
    pos = 0
    for name, want in items:
        R.eq(dd[pos : pos + len(want)], want, c.where, f"{what} discretionary data: {name}")
        pos += len(want)
    R.eq(len(dd), pos, c.where, f"{what} discretionary data length")
    return "".join(v for _, v in items)


def check_tracks(R, c):
    ms = c.profile["mag_stripe"]
    w = c.where
    c.cvv = cvv_ref(R, c, "CVV", c.sc)
    c.icvv = cvv_ref(R, c, "iCVV", "999")
    t = c.card.get("tracks") or {}
    t2 = t.get("track2", "")
    pan, sep, rest = t2.partition("=")
    R.check(sep == "=", w, "track 2 has the = separator")
    R.eq(pan, c.pan, w, "track 2 PAN")
    R.eq(rest[:4], c.yymm, w, "track 2 expiry YYMM")
    R.eq(rest[4:7], c.sc, w, "track 2 service code = input's")
    c.t2_dd = check_dd(R, c, "track 2", rest[7:], dd_items(c, ms["track2"]))
    if "track1" in ms:
        t1 = t.get("track1") or ""
        parts = t1.split("^")
        R.check(len(parts) == 3 and parts[0].startswith("B"), w, "track 1 is B PAN ^ NAME ^ DATA")
        R.eq(parts[0][1:], c.pan, w, "track 1 PAN")
        R.eq(parts[1], c.rec.get("cardholder_name"), w, "track 1 name = input cardholder name")
        R.eq(parts[2][:4], c.yymm, w, "track 1 expiry YYMM")
        R.eq(parts[2][4:7], c.sc, w, "track 1 service code")
        c.t1_dd = check_dd(R, c, "track 1", parts[2][7:], dd_items(c, ms["track1"]))
    else:
        R.check("track1" not in t, w, "no track 1 (the profile has none)")
    # The chip's track data carries the iCVV, never the stripe's CVV (emv.md 4.2).
    def for_chip(layout):
        return {"discretionary": ["icvv" if x == "cvv" else x for x in layout["discretionary"]]}

    chip_layout = ms.get("chip_track2") or for_chip(ms["track2"])
    c.chip_items = dd_items(c, chip_layout)
    c.chip_t2_dd = "".join(v for _, v in c.chip_items)
    c.chip_t2 = f"{c.pan}D{c.yymm}{c.sc}" + c.chip_t2_dd
    chip_t1 = ms.get("chip_track1") or (for_chip(ms["track1"]) if "track1" in ms else None)
    if chip_t1 is not None:
        c.chip_t1_dd = "".join(v for _, v in dd_items(c, chip_t1))
    if ms.get("cvv2", True):  # profile default: true
        R.eq(c.card["carrier"].get("cvv2"), cvv_ref(R, c, "CVV2", "000"), w, "CVV2 on the carrier (service code 000)")
    else:
        R.check("cvv2" not in c.card["carrier"], w, "no CVV2 on the carrier (the profile asks for none)")


def check_tag57(R, c, v, app):
    w = c.where
    h = v.hex().upper()
    if len(c.chip_t2) % 2:
        R.check(h.endswith("F"), w, f"{app}: tag 57 F-padded")
        h = h[:-1]
    pan, sep, rest = h.partition("D")
    R.check(sep == "D", w, f"{app}: tag 57 has the D separator")
    R.eq(pan, c.pan, w, f"{app}: tag 57 PAN")
    R.eq(rest[:4], c.yymm, w, f"{app}: tag 57 expiry")
    R.eq(rest[4:7], c.sc, w, f"{app}: tag 57 service code")
    check_dd(R, c, f"{app}: tag 57", rest[7:], c.chip_items)


def check_embossing(R, c):
    w, card, rec = c.where, c.card, c.rec
    mm_yy = f"{c.yymm[2:]}/{c.yymm[:2]}"
    emb = card.get("embossing") or []
    R.eq(emb[:1], [group_pan(c.pan)], w, "embossing line 1 = grouped PAN")
    R.eq(emb[1:2], [mm_yy], w, "embossing line 2 = MM/YY")
    R.eq(emb[2:], [rec["embossing_name"]] if rec.get("embossing_name") else [], w, "embossing name line")
    car = card["carrier"]
    m = car.get("pan_masked", "")
    n = len(c.pan)
    keep_left = 6 if n >= 16 else 0
    ok = (len(m) == n and m[:keep_left] == c.pan[:keep_left] and m[n - 4 :] == c.pan[n - 4 :]
          and set(m[keep_left : n - 4]) == {"*"})
    R.check(ok, w, "carrier pan_masked shows at most the first 6 and last 4 digits", m)
    R.eq(car.get("expiry"), mm_yy, w, "carrier expiry MM/YY")
    R.eq(car.get("name"), rec.get("embossing_name") or None, w, "carrier name = embossing name")
    if card.get("mailer") is not None:
        R.eq(card["mailer"].get("name"), rec.get("embossing_name") or rec.get("cardholder_name"), w, "mailer name")
        R.eq(card["mailer"]["reference"], car.get("reference"), w, "mailer and carrier share the reference")
    ref = car.get("reference", "")
    R.check(ref and c.pan not in ref and c.pan[-8:] not in ref, w, "reference is set and is not the PAN", ref)


# ---------------------------------------------------------------------------------------------
# Applications
# ---------------------------------------------------------------------------------------------


def dgi_map(R, c, app, out):
    d = {}
    for x in out["dgis"]:
        R.check(x["dgi"] not in d, c.where, f"{app}: DGI {x['dgi']} appears once")
        d[x["dgi"].upper()] = x
    return d


def secret_clear(R, c, app, dgis, dgi_id, tk):
    """Decrypt a secret DGI under the transport key (3DES-ECB); checks its flags and key reference."""
    x = dgis.get(dgi_id)
    if not R.check(x is not None, c.where, f"{app}: DGI {dgi_id} present"):
        raise ValueError(f"DGI {dgi_id} missing")
    R.eq(x.get("encrypted"), True, c.where, f"{app}: DGI {dgi_id} encrypted")
    R.eq(x.get("key"), {"label": tk, "kcv": c.keys.kcv(tk)}, c.where, f"{app}: DGI {dgi_id} key reference")
    return tdes_dec(c.keys.value(tk), bytes.fromhex(x["data"]))


def clear_dgi(R, c, app, dgis, dgi_id):
    x = dgis.get(dgi_id)
    if not R.check(x is not None, c.where, f"{app}: DGI {dgi_id} present"):
        raise ValueError(f"DGI {dgi_id} missing")
    R.check(not x.get("encrypted") and "key" not in x, c.where, f"{app}: DGI {dgi_id} in clear, no key")
    return bytes.fromhex(x["data"])


def derivation(a, pan):
    mode = a.get("key_derivation", "auto")
    return "B" if len(pan) > 16 and mode in ("auto", "option_b") else "A"


def derive(method, imk, pan, psn):
    return (emv_kd.derive_icc_mk_b if method == "B" else emv_kd.derive_icc_mk_a)(imk, pan, psn)


TX = dict(
    tag_9f02=bytes.fromhex("000000012345"), tag_9f03=bytes(6), tag_9f1a=bytes.fromhex("0840"),
    tag_95=bytes.fromhex("8000048000"), tag_5f2a=bytes.fromhex("0978"), tag_9a=bytes.fromhex("251125"),
    tag_9c=b"\x00", tag_9f37=bytes.fromhex("52BF4585"), tag_9f36=bytes.fromhex("0042"),
)


def check_master_keys(R, c, name, a, dgis, kind):
    w = c.where
    tk = a["secret"]["transport_key"]
    if kind == "cap":
        labels = [a["cap"]["imk"]]
    else:
        k = a["keys"]
        labels = [k["ac"], k["smi"], k["smc"]] + [k["extra"][n] for n in sorted(k.get("extra", {}))]
    method = derivation(a, c.pan)
    clear = secret_clear(R, c, name, dgis, "8000", tk)
    if not R.eq(len(clear), 16 * len(labels), w, f"{name}: DGI 8000 holds {len(labels)} double-length keys"):
        return
    got = [clear[16 * i : 16 * i + 16] for i in range(len(labels))]
    want = [derive(method, c.keys.value(lb), c.pan, c.psn) for lb in labels]
    for lb, g, x in zip(labels, got, want, strict=True):
        detail = None
        if g != x and emv_tools.adjust_key_parity(g) == x:
            detail = "equal apart from DES parity bits"
        R.check(g == x, w, f"{name}: DGI 8000 key from {lb} = pyemv Option {method}", detail
                or (None if g == x else f"KCV expected {kcv3(x).hex().upper()}, got {kcv3(g).hex().upper()}"))
    kcvs = clear_dgi(R, c, name, dgis, "9000")
    R.eq(kcvs, b"".join(kcv3(x) for x in want), w, f"{name}: DGI 9000 = KCVs of the pyemv keys")
    R.eq(kcvs, b"".join(kcv3(g) for g in got), w, f"{name}: DGI 9000 = KCVs of the DGI 8000 keys")

    # ARQC: pyemv's issuer side (from the IMKs) against the card side (the decrypted MK-AC).
    imk = [c.keys.value(lb) for lb in labels] + [c.keys.value(labels[0])] * 2
    aip = bytes.fromhex(a["aip"])
    tx = dict(TX, tag_82=aip)
    data = b"".join(tx[t] for t in ("tag_9f02", "tag_9f03", "tag_9f1a", "tag_95", "tag_5f2a", "tag_9a", "tag_9c",
                                    "tag_9f37", "tag_82", "tag_9f36"))
    mk_ac = got[0]
    atc, un = tx["tag_9f36"], tx["tag_9f37"]
    iad = bytes.fromhex("06010A03A0B800")
    if method == "A":
        cvr4, cvr6 = bytes.fromhex("03A00000"), bytes.fromhex("A00003220000")
        variants = [
            ("CVN10", emv_cvn.VisaCVN10, cvr4, lambda: emv_ac.generate_ac(mk_ac, data + cvr4, emv_ac.PaddingType.VISA, 8)),
            ("CVN16", emv_cvn.MasterCardCVN16, cvr6, lambda: emv_ac.generate_ac(
                emv_kd.derive_common_sk(mk_ac, atc + b"\x00\x00" + un), data + cvr6, emv_ac.PaddingType.EMV, 8)),
            ("CVN20", emv_cvn.MasterCardCVN20, cvr6, lambda: emv_ac.generate_ac(
                emv_kd.derive_common_sk(mk_ac, atc + bytes(6)), data + cvr6, emv_ac.PaddingType.EMV, 8)),
        ]
    else:
        variants = [
            (v, cls, iad, lambda: emv_ac.generate_ac(
                emv_kd.derive_common_sk(mk_ac, atc + bytes(6)), data + iad, emv_ac.PaddingType.EMV, 8))
            for v, cls in (("CVN18", emv_cvn.VisaCVN18), ("CVN22", emv_cvn.VisaCVN22))
        ]
    for v, cls, card_data, card_side in variants:
        issuer = cls(imk[0], imk[1], imk[2], c.pan, c.psn)
        R.eq(issuer.icc_mk_ac, mk_ac, w, f"{name}: pyemv {v} ICC MK-AC = DGI 8000 key 1")
        if kind != "cap":
            R.eq(issuer.icc_mk_smi, got[1], w, f"{name}: pyemv {v} ICC MK-SMI = DGI 8000 key 2")
            R.eq(issuer.icc_mk_smc, got[2], w, f"{name}: pyemv {v} ICC MK-SMC = DGI 8000 key 3")
        arqc = issuer.generate_ac(
            tx["tag_9f02"], tx["tag_9f03"], tx["tag_9f1a"], tx["tag_95"], tx["tag_5f2a"], tx["tag_9a"], tx["tag_9c"],
            tx["tag_9f37"], tx["tag_82"], tx["tag_9f36"], card_data)
        R.eq(card_side(), arqc, w, f"{name}: ARQC {v} from the DGI 8000 MK-AC = pyemv issuer-side ARQC")


def check_offline_pin(R, c, name, a, dgis):
    chip = c.profile["pin"]["chip"]
    clear = secret_clear(R, c, name, dgis, chip["dgi"].upper(), a["secret"]["transport_key"])
    R.eq(len(clear), 8, c.where, f"{name}: DGI {chip['dgi']} is one PIN block")
    if chip.get("block_format", "iso2") != "iso2":
        raise ValueError(f"chip PIN format {chip['block_format']}: no reference decoder here")
    R.eq(psec_pinblock.decode_pinblock_iso_2(clear), c.pin, c.where, f"{name}: DGI {chip['dgi']} PIN = mailer PIN (psec ISO 2)")
    R.eq(clear, emv_sm.format_iso9564_2_pin_block(c.pin), c.where, f"{name}: DGI {chip['dgi']} = pyemv ISO 9564-2 block")
    lim = chip["try_limit"]
    R.eq(clear_dgi(R, c, name, dgis, chip["try_dgi"].upper()), bytes([lim, lim]), c.where,
         f"{name}: DGI {chip['try_dgi']} = try limit twice")


def expected_dgis(c, a, kind):
    ids = {f"{r['sfi']:02X}{r['record']:02X}" for r in a.get("records", [])}
    ids |= {g["dgi"].upper() for g in a.get("data_groups", [])}
    if a.get("secret") and (a.get("keys") or (a.get("cap") or {}).get("imk")):
        ids |= {"8000", "9000"}
    if a.get("offline_pin") and a.get("secret") and (c.profile.get("pin") or {}).get("chip"):
        ids |= {c.profile["pin"]["chip"]["dgi"].upper(), c.profile["pin"]["chip"]["try_dgi"].upper()}
    if a.get("oda") == "dda":
        ids |= {f"{0x8201 + i:04X}" for i in range(5)}
    return ids


def check_flags(R, c, name, a, dgis):
    secret = {d.upper() for d in (a.get("secret") or {}).get("dgis", [])}
    for i, x in dgis.items():
        if i.startswith("8"):
            R.check(x.get("encrypted") is True and i in secret, c.where,
                    f"{name}: DGI {i} is secret: encrypted and listed in secret.dgis")
        else:
            R.check(not x.get("encrypted") and "key" not in x, c.where, f"{name}: DGI {i} in clear")


# EMV data-element formats (Book 1 Annex B / Book 3 Annex A) of the tags a profile may fill from an
# input field: numeric `n` (BCD, right-justified, leading zeros, fixed byte length) or text
# (`an`/`ans`, ASCII, length range). A field-sourced tag not listed here fails: add it with its format.
FIELD_TAG_FORMATS = {
    "5F28": ("n", 2), "9F1A": ("n", 2), "5F2A": ("n", 2), "5F36": ("n", 1), "9F42": ("n", 2), "9F44": ("n", 1),
    "9F15": ("n", 2), "9F3C": ("n", 2), "9F3D": ("n", 1), "9F11": ("n", 1),
    "50": ("ans", 16), "9F12": ("ans", 16), "5F2D": ("an", 8), "5F20": ("ans", 26), "9F0B": ("ans", 45),
    "5F50": ("ans", 255), "5F53": ("an", 34), "9F4E": ("ans", 255),
}


def field_tag_value(tag, text):
    fmt, size = FIELD_TAG_FORMATS[tag]
    if fmt == "n":
        if not text.isdigit() or len(text) > 2 * size:
            raise ValueError(f"tag {tag} is n{2 * size}; field value {text!r} does not fit")
        return bytes.fromhex(text.zfill(2 * size))
    if len(text) > size:
        raise ValueError(f"tag {tag} is {fmt} 1-{size}; field value is {len(text)} characters")
    return text.encode("ascii")


def tag_expected(c, tag, src, a):
    """A tag's expected value from the profile, or None when a certificate check covers it."""
    if "constant" in src:
        return bytes.fromhex(src["constant"])
    if "field" in src:
        if tag not in FIELD_TAG_FORMATS:
            raise ValueError(f"tag {tag} from field {src['field']}: format unknown to the checker")
        return field_tag_value(tag, c.rec["fields"][src["field"]])
    if "derived" in src:
        d = src["derived"]
        yy, mm = int(c.yymm[:2]), int(c.yymm[2:])
        if d == "pan":
            return cn(c.pan)
        if d == "psn":
            return bcd(c.psn)
        if d == "expiry_yymmdd":
            return bcd(f"{c.yymm}{calendar.monthrange(2000 + yy, mm)[1]:02}")
        if d == "effective_yymmdd":
            return bcd(c.rec["effective"] + "01")
        if d == "service_code":
            return bcd("0" + c.sc)
        if d == "cardholder_name":
            return c.rec["cardholder_name"].encode()
        if d == "track2_equivalent":
            return cn(c.chip_t2)  # D, the separator, is a hex nibble
        if d == "track1_discretionary":
            return c.chip_t1_dd.encode()
        if d == "track2_discretionary":
            return cn(c.chip_t2_dd)
        raise ValueError(f"derived {d}")
    k = src["computed"]
    simple = {
        "ca_pk_index": a.get("ca_index"), "aip": a.get("aip"), "afl": a.get("afl"),
        "cap_iaf": (a.get("cap") or {}).get("iaf"), "cap_ipb": (a.get("cap") or {}).get("ipb"),
        "cap_cdol1": (a.get("cap") or {}).get("cdol1"),
    }
    if k in simple:
        return None if simple[k] is None else bytes.fromhex(simple[k])
    return None  # 90 92 9F32 93 9F46 9F47 9F48: the certificate checks


def check_emv_records(R, c, name, a, dgis):
    """Record and data-group DGIs: tag order and values per the profile. Returns (tags, records)."""
    w = c.where
    tags, records = {}, {}
    specs = [(f"{r['sfi']:02X}{r['record']:02X}", r["tags"], True) for r in a.get("records", [])]
    specs += [(g["dgi"].upper(), g["tags"], False) for g in a.get("data_groups", [])]
    for dgi_id, want_tags, is_record in specs:
        raw = clear_dgi(R, c, name, dgis, dgi_id)
        if is_record:
            outer = tlv_parse(raw)
            if not R.check(len(outer) == 1 and outer[0][0] == "70", w, f"{name}: DGI {dgi_id} is one 70 template"):
                continue
            records[dgi_id] = raw
            body = outer[0][1]
        else:
            body = raw
        items = tlv_parse(body)
        got = [t for t, _ in items]
        want = [t.upper() for t in want_tags if not (t.upper() in ("92", "9F48") and t.upper() not in got)]
        R.eq(got, want, w, f"{name}: DGI {dgi_id} tags in profile order")
        for t, v in items:
            R.check(t not in tags, w, f"{name}: tag {t} appears once in the application")
            tags[t] = v
    srcs = {t.upper(): s for t, s in a.get("tags", {}).items()}
    for t, v in tags.items():
        if t not in srcs:
            R.check(False, w, f"{name}: tag {t} has a source in the profile")
            continue
        want = R.run(w, f"{name}: tag {t} value", tag_expected, c, t, srcs[t], a)
        if want is not None:
            R.eq(v, want, w, f"{name}: tag {t} value")
    if "57" in tags:
        check_tag57(R, c, tags["57"], name)
    check_no_stripe_data(R, c, name, tags)
    return tags, records


def check_no_stripe_data(R, c, name, tags):
    """No chip tag carries the stripe's discretionary data (with its CVV): whoever reads the chip
    must not be able to write a working stripe. Skipped for a card whose CVV equals its iCVV."""
    if c.cvv is None or c.cvv == c.icvv:
        return
    stripe = [dd for dd in (c.t1_dd, c.t2_dd) if dd]
    for t, v in tags.items():
        texts = (v.hex().upper(), v.decode("latin-1"))
        leak = [dd for dd in stripe if any(dd in x for x in texts)]
        R.check(not leak, c.where, f"{name}: tag {t} does not carry the stripe's CVV", f"holds {leak}")


def static_data(R, c, name, a, tags, records):
    """Walk the AFL (94): ODA records (SFI 1-10 without 70 L, 11-30 whole), then the AIP if 9F4A=82."""
    w = c.where
    afl = tags.get("94")
    if not R.check(afl is not None and len(afl) % 4 == 0 and afl, w, f"{name}: AFL present, 4 bytes per entry"):
        raise ValueError("no usable AFL")
    covered, oda = [], []
    for i in range(0, len(afl), 4):
        b0, first, last, n = afl[i : i + 4]
        sfi = b0 >> 3
        R.check(b0 & 7 == 0 and 1 <= sfi <= 30 and 1 <= first <= last and n <= last - first + 1, w,
                f"{name}: AFL entry {afl[i:i + 4].hex().upper()} well formed")
        for r in range(first, last + 1):
            covered.append((sfi, r))
            if r < first + n:
                oda.append((sfi, r))
    R.eq(sorted(covered), sorted((r["sfi"], r["record"]) for r in a["records"]), w, f"{name}: AFL lists every record DGI")
    R.eq(sorted(oda), sorted((r["sfi"], r["record"]) for r in a["records"] if r.get("oda")), w,
         f"{name}: AFL ODA records = the profile's oda records")
    out = b""
    for sfi, r in oda:
        raw = records[f"{sfi:02X}{r:02X}"]
        out += tlv_parse(raw)[0][1] if sfi <= 10 else raw
    if "9F4A" in tags:
        R.eq(tags["9F4A"], b"\x82", w, f"{name}: 9F4A lists only 82")
        out += tags["82"]
    return out


def recover_issuer(R, c, name, a, tags, cert90=None, quiet=False):
    """Tag 90 with the TEST CA key (emv.md §1.4). Returns (problems, (n, e) of the issuer)."""
    k = c.keys
    inv = k.issuers[a["issuer_key"]]
    cert = tags["90"] if cert90 is None else cert90
    rem, exp = tags.get("92", b""), tags.get("9F32", b"")
    probs = []

    def need(ok, what, detail=None):
        if not quiet:
            R.check(ok, c.where, f"{name}: issuer certificate 90: {what}", detail)
        if not ok:
            probs.append(what)

    nca = k.ca_len
    need(len(cert) == nca, "length = N_CA", f"{len(cert)} bytes")
    m = rsa_recover(cert, k.ca_n, k.ca_e, nca)
    need(m[0] == 0x6A and m[-1] == 0xBC, "header 6A, trailer BC", f"{m[0]:02X}..{m[-1]:02X}")
    need(m[1] == 0x02, "format 02", f"{m[1]:02X}")
    need(m[11] == 1 and m[12] == 1, "hash and PK algorithm indicators 01 01")
    h = hashlib.sha1(m[1 : nca - 21] + rem + exp).digest()
    need(h == m[nca - 21 : nca - 1], "SHA-1 over format..modulus field ‖ 92 ‖ 9F32")
    iid = m[2:6].hex().upper()
    digits = iid.rstrip("F")
    need(digits.isdigit() and 3 <= len(digits) <= 8 and set(iid[len(digits):]) <= {"F"}, "issuer id = digits, F-padded", iid)
    need(c.pan.startswith(digits), "issuer id = leading PAN digits", iid)
    need(digits == inv["issuer_id"], "issuer id = the inventory's", iid)
    mmyy = m[6:8].hex()
    need(mmyy == inv["expiry"], "expiry MMYY = the inventory's", mmyy)
    exp_date = (2000 + int(mmyy[2:]), int(mmyy[:2]))
    today = datetime.date.today()
    need(1 <= exp_date[1] <= 12 and exp_date >= (today.year, today.month), "expiry is a month not in the past", mmyy)
    ni = m[13]
    need(ni == inv["bits"] // 8, "N_I = the inventory's key size", f"{ni}")
    need(m[14] == len(exp) and exp == exp_bytes(inv["exponent"]), "exponent length byte and 9F32", exp.hex())
    left = m[15 : nca - 21]
    if ni <= nca - 36:
        need("92" not in tags or cert90 is not None, "no remainder 92 when the modulus fits")
        need(set(left[ni:]) <= {0xBB}, "BB padding after the modulus")
        mod = left[:ni]
    else:
        need(len(rem) == ni - (nca - 36), "remainder 92 length", f"{len(rem)}")
        mod = left + rem
    n = b2i(mod)
    need(n.bit_length() > 8 * (ni - 1), "modulus has N_I significant bytes")
    return probs, (n, b2i(exp) if exp else 0, ni, mmyy)


def check_sda(R, c, name, a, tags, sdata, issuer, ssad=None, quiet=False):
    n, e, ni, _ = issuer
    s = tags["93"] if ssad is None else ssad
    probs = []

    def need(ok, what, detail=None):
        if not quiet:
            R.check(ok, c.where, f"{name}: signed static data 93: {what}", detail)
        if not ok:
            probs.append(what)

    need(len(s) == ni, "length = N_I", f"{len(s)}")
    m = rsa_recover(s, n, e, ni)
    need(m[0] == 0x6A and m[-1] == 0xBC and m[1] == 0x03 and m[2] == 0x01, "6A 03 01 .. BC")
    need(set(m[5 : ni - 21]) == {0xBB} and ni - 26 == len(m[5 : ni - 21]), "pad pattern N_I-26 bytes of BB")
    need(hashlib.sha1(m[1 : ni - 21] + sdata).digest() == m[ni - 21 : ni - 1], "SHA-1 over the static data")
    if "9F45" in tags:
        need(m[3:5] == tags["9F45"], "DAC = 9F45")
    return probs


def check_dda(R, c, name, a, tags, sdata, issuer, dgis, cert=None, quiet=False):
    n_i, e_i, ni, issuer_mmyy = issuer
    s = tags["9F46"] if cert is None else cert
    rem, exp = tags.get("9F48", b""), tags.get("9F47", b"")
    spec = a["icc_key"]
    probs = []

    def need(ok, what, detail=None):
        if not quiet:
            R.check(ok, c.where, f"{name}: ICC certificate 9F46: {what}", detail)
        if not ok:
            probs.append(what)

    need(len(s) == ni, "length = N_I", f"{len(s)}")
    m = rsa_recover(s, n_i, e_i, ni)
    need(m[0] == 0x6A and m[-1] == 0xBC and m[1] == 0x04, "6A 04 .. BC")
    need(m[2:12] == bytes.fromhex(c.pan.ljust(20, "F")), "PAN, F-padded", m[2:12].hex().upper())
    need(m[12:14].hex() == c.yymm[2:] + c.yymm[:2], "expiry MMYY = the card's", m[12:14].hex())
    yymm = lambda mmyy: mmyy[2:] + mmyy[:2]  # noqa: E731
    need(yymm(m[12:14].hex()) <= yymm(issuer_mmyy), "expires no later than the issuer certificate",
         f"{m[12:14].hex()} vs {issuer_mmyy}")
    serial = hashlib.sha256(f"{c.pan}{c.psn}{c.yymm}".encode()).digest()[:3]
    need(m[14:17] == serial, "serial = SHA-256(PAN‖PSN‖YYMM)[0..3]", m[14:17].hex().upper())
    need(m[17] == 1 and m[18] == 1, "hash and PK algorithm indicators 01 01")
    nic = m[19]
    need(nic == spec["bits"] // 8, "N_IC = the profile's icc_key bits", f"{nic}")
    need(m[20] == len(exp) and exp == exp_bytes(spec["exponent"]), "exponent length byte and 9F47", exp.hex())
    need(hashlib.sha1(m[1 : ni - 21] + rem + exp + sdata).digest() == m[ni - 21 : ni - 1],
         "SHA-1 over format..modulus ‖ 9F48 ‖ 9F47 ‖ static data")
    left = m[21 : ni - 21]
    if nic <= ni - 42:
        need("9F48" not in tags, "no remainder 9F48 when the modulus fits")
        need(set(left[nic:]) <= {0xBB}, "BB padding after the modulus")
        mod = left[:nic]
    else:
        need(len(rem) == nic - (ni - 42), "remainder 9F48 length", f"{len(rem)}")
        mod = left + rem
    n = b2i(mod)
    need(n.bit_length() > 8 * (nic - 1), "modulus has N_IC significant bytes")
    if quiet:
        return probs
    # The private key as VSDC/PBOC CPS number it (emv.md §3.2): 8201 q⁻¹ mod p, 8202 d mod (q-1),
    # 8203 d mod (p-1), 8204 q, 8205 p; each ISO 9797-1 method 2 padded.
    tk = a["secret"]["transport_key"]
    qinv, dq, dp, q, p = (b2i(unpad_m2(secret_clear(R, c, name, dgis, f"{0x8201 + i:04X}", tk))) for i in range(5))
    e = b2i(exp)
    R.check(p * q == n, c.where, f"{name}: p·q (DGIs 8205·8204) = certified ICC modulus")
    R.check((e * dp) % (p - 1) == 1 and (e * dq) % (q - 1) == 1, c.where, f"{name}: DGIs 8203/8202 are d mod p-1, q-1")
    R.check((qinv * q) % p == 1, c.where, f"{name}: DGI 8201 is q⁻¹ mod p")
    # Sign a format-05-like block with the CRT parts; the certified public key must recover it.
    block = b"\x6A\x05\x01" + b"\xBB" * (nic - 25) + hashlib.sha1(b"quill").digest() + b"\xBC"
    x = b2i(block)
    m1, m2 = pow(x, dp, p), pow(x, dq, q)
    sig = m2 + q * ((qinv * (m1 - m2)) % p)
    R.check(pow(sig, e, n) == x, c.where, f"{name}: a CRT signature verifies with the certified ICC key")
    return probs


def flipped(b):
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


def fails(fn):
    """A negative control: the verification raises or reports a problem."""
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - e.g. a changed signature no longer below the modulus
        return True


def check_oda(R, c, name, a, tags, records, dgis):
    w = c.where
    aip = tags.get("82", b"")
    bit = {"sda": 0x40, "dda": 0x20}[a["oda"]]
    R.check(len(aip) == 2 and aip[0] & bit, w, f"{name}: AIP announces {a['oda'].upper()}", aip.hex())
    R.eq(tags.get("8F"), bytes.fromhex(a["ca_index"]), w, f"{name}: 8F = CA index")
    inv = c.keys.issuers[a["issuer_key"]]
    R.eq(a["aid"][:10].upper(), inv["rid"].upper(), w, f"{name}: AID RID = the issuer certificate's RID")
    R.eq(inv["ca_index"].upper(), tags.get("8F", b"").hex().upper(), w, f"{name}: issuer certified under index 8F")
    _, issuer = recover_issuer(R, c, name, a, tags)
    R.check(fails(lambda: recover_issuer(R, c, name, a, tags, flipped(tags["90"]), True)[0]), w,
            f"{name}: negative control: 90 with one byte changed fails")
    sdata = static_data(R, c, name, a, tags, records)
    if a["oda"] == "sda":
        check_sda(R, c, name, a, tags, sdata, issuer)
        R.check(fails(lambda: check_sda(R, c, name, a, tags, sdata, issuer, flipped(tags["93"]), True)), w,
                f"{name}: negative control: 93 with one byte changed fails")
        R.check(fails(lambda: check_sda(R, c, name, a, tags, sdata + b"\x00", issuer, None, True)), w,
                f"{name}: negative control: 93 over other static data fails")
    else:
        check_dda(R, c, name, a, tags, sdata, issuer, dgis)
        R.check(fails(lambda: check_dda(R, c, name, a, tags, sdata, issuer, dgis, flipped(tags["9F46"]), True)), w,
                f"{name}: negative control: 9F46 with one byte changed fails")
        R.check(fails(lambda: check_dda(R, c, name, a, tags, sdata + b"\x00", issuer, dgis, None, True)), w,
                f"{name}: negative control: 9F46 over other static data fails")


def check_emv_app(R, c, a, out, kind):
    name = a["name"]
    dgis = dgi_map(R, c, name, out)
    R.eq(set(dgis), expected_dgis(c, a, kind), c.where, f"{name}: DGI set")
    check_flags(R, c, name, a, dgis)
    R.run(c.where, f"{name}: master keys", check_master_keys, R, c, name, a, dgis, kind)
    if a.get("offline_pin"):
        R.run(c.where, f"{name}: offline PIN", check_offline_pin, R, c, name, a, dgis)
    got = R.run(c.where, f"{name}: records", check_emv_records, R, c, name, a, dgis)
    if got is None:
        return
    tags, records = got
    if "82" in tags:
        R.eq(tags["82"], bytes.fromhex(a["aip"]), c.where, f"{name}: AIP 82 = profile aip")
    if a.get("oda", "none") in ("sda", "dda"):
        R.run(c.where, f"{name}: offline data authentication", check_oda, R, c, name, a, tags, records, dgis)
    else:
        R.check(not {"90", "93", "9F46"} & set(tags), c.where, f"{name}: no certificates without ODA")


def check_epurse(R, c, a, out):
    name, w = a["name"], c.where
    dgis = dgi_map(R, c, name, out)
    sid = (a.get("secret") or {}).get("dgis", ["8001"])[0].upper()
    kid = f"{0x9000 | (int(sid, 16) & 0x0FFF):04X}"
    R.eq(set(dgis), {"9201", sid, kid} if a.get("secret") else {"9201"}, w, f"{name}: DGI set")
    check_flags(R, c, name, a, dgis)
    params = tlv_parse(clear_dgi(R, c, name, dgis, "9201"))
    yy, mm = int(c.yymm[:2]), int(c.yymm[2:])
    R.eq(params, [
        ("5A", cn(c.pan)), ("5F24", bcd(f"{c.yymm}{calendar.monthrange(2000 + yy, mm)[1]:02}")),
        ("DF50", bcd("0" + a["currency"])), ("DF51", bytes([a.get("currency_exponent", 2)])),
        ("DF52", min(a["balance_limit"], 2**32 - 1).to_bytes(4, "big")),
        ("DF53", min(a["transaction_limit"], 2**32 - 1).to_bytes(4, "big")),
    ], w, f"{name}: DGI 9201 purse parameters")
    if not a.get("secret"):
        return
    labels = [a["master_keys"][k] for k in sorted(a["master_keys"])]
    clear = secret_clear(R, c, name, dgis, sid, a["secret"]["transport_key"])
    want = [emv_kd.derive_icc_mk_a(c.keys.value(lb), c.pan, c.psn) for lb in labels]
    if R.eq(len(clear), 16 * len(labels), w, f"{name}: DGI {sid} holds {len(labels)} keys"):
        for i, lb in enumerate(labels):
            R.eq(clear[16 * i : 16 * i + 16], want[i], w, f"{name}: DGI {sid} key from {lb} = pyemv Option A")
    R.eq(clear_dgi(R, c, name, dgis, kid), b"".join(kcv3(x) for x in want), w, f"{name}: DGI {kid} = KCVs")


def check_card(R, card, rec, profile, keys):
    c = Card(card, rec, profile, keys)
    w = c.where
    check_record_fields(R, c)
    if profile.get("pin"):
        R.run(w, "PIN", check_pin, R, c)
    else:
        R.check("mailer" not in card, w, "no mailer without [pin]")
    if profile.get("mag_stripe"):
        R.run(w, "tracks and CVVs", check_tracks, R, c)
    else:
        R.check("tracks" not in card, w, "no tracks without [mag_stripe]")
    apps = profile["applications"]
    R.eq([(x["name"], x["aid"]) for x in card["applications"]], [(a["name"], a["aid"].upper()) for a in apps], w,
         "applications in profile order with their AIDs")
    for a, out in zip(apps, card["applications"]):
        if a["kind"] in ("emv", "cap"):
            R.run(w, a["name"], check_emv_app, R, c, a, out, a["kind"])
        elif a["kind"] == "epurse":
            R.run(w, a["name"], check_epurse, R, c, a, out)
        else:
            R.check(False, w, f"{a['name']}: application kind {a['kind']} known to the checker")
    R.run(w, "embossing and carrier", check_embossing, R, c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--keys", default=str(ROOT / "prep/test-keys/test-keys.toml"))
    ap.add_argument("--ca", default=str(ROOT / "prep/test-keys/quill-TEST-ca-1984.pem"))
    ap.add_argument("--issuer-bits", type=int, help="the run made the TEST issuers this size (quill prep run --issuer-bits)")
    ap.add_argument("--issuer-exponent", type=int, help="… with this public exponent")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every passed check too")
    ap.add_argument("--ca-public", metavar="N_HEX:E_HEX",
                    help="recover 90 with this CA public key instead of the TEST CA's (a CA cluster's exported key)")
    ap.add_argument("--issuer", action="append", default=[], metavar="LABEL:RID:CA_INDEX:BITS:E:ISSUER_ID:MMYY",
                    help="an issuer key the profile names that is not in the TEST set (certified by --ca-public)")
    args = ap.parse_args()
    R = Report(args.verbose)
    profile = tomllib.loads(Path(args.profile).read_text())
    keys = TestKeys(args.keys, args.ca)
    for spec in args.issuer:
        label, rid, ca_index, bits, e, issuer_id, mmyy = spec.split(":")
        keys.issuers[label] = {"label": label, "rid": rid, "ca_index": ca_index, "bits": int(bits),
                               "exponent": int(e), "issuer_id": issuer_id, "expiry": mmyy}
    for issuer in keys.issuers.values():
        issuer["bits"] = args.issuer_bits or issuer["bits"]
        issuer["exponent"] = args.issuer_exponent or issuer["exponent"]
    self_test(R, keys)
    # A CA cluster's exported key instead of the TEST CA's (after the self-test of the TEST set).
    if args.ca_public:
        n_hex, e_hex = args.ca_public.split(":")
        keys.ca_n, keys.ca_e = int(n_hex, 16), int(e_hex, 16)
        keys.ca_len = (keys.ca_n.bit_length() + 7) // 8
    out = Path(args.out)
    streams = {}
    for stream, fname in STREAMS:
        streams[stream] = R.run(fname, "stream", check_stream, R, out, stream, fname, profile, keys)
    cards, mailers, carriers = streams["cards"], streams["pin-mailers"], streams["carriers"]
    if cards is None:
        print(f"{R.passed} checks passed, {R.failed} failed")
        return 1
    inputs = read_input(profile, args.input)
    R.eq([c["line"] for c in cards], sorted(inputs), "cards.jsonl", "one card per input record, in input order")
    R.eq(carriers, [c["carrier"] for c in cards], "carriers.jsonl", "carrier records = the cards' carriers, in order")
    want_mailers = [c["mailer"] for c in cards if "mailer" in c]
    R.eq(mailers, want_mailers, "pin-mailers.jsonl", "mailer records = the cards' mailers, in order")
    if profile.get("pin"):
        R.eq(len(want_mailers), len(cards), "pin-mailers.jsonl", "one mailer per card")
    refs = [c["carrier"].get("reference") for c in cards]
    R.eq(len(set(refs)), len(refs), "carriers.jsonl", "references are unique")
    for card in cards:
        rec = inputs.get(card.get("line"))
        if R.check(rec is not None, f"cards.jsonl card line {card.get('line')}", "input record at this line"):
            R.run(f"cards.jsonl card line {card['line']}", "card", check_card, R, card, rec, profile, keys)
    print(f"{profile['product']['name']}: {len(cards)} cards; {R.passed} checks passed, {R.failed} failed")
    print(f"{R.passed} checks passed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
