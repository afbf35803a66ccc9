"""An interop peer on Python's `cryptography` (pinned in scripts/test.sh): opens the
envelopes e2e/tests/interop.rs sends and makes one of each kind for it to open.

Reads a request on stdin: {"me": private JWK, "recipient": public JWK, "envelopes":
[{"topic", "jwe"}…]}; writes {"opened": [{"ok", "kind", "plaintext"} | {"ok": false,
"code"}…], "made": {"sealed", "room_key", "room", "room_key_value"}}.
"""
import base64
import hashlib
import hmac
import json
import os
import sys

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OAEP = asym.OAEP(mgf=asym.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def num(text):
    return int.from_bytes(unb64(text), "big")


class Refused(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def tag_of(mac_key, aad, iv, ct):
    al = (len(aad) * 8).to_bytes(8, "big")
    return hmac.new(mac_key, aad + iv + ct + al, hashlib.sha512).digest()[:32]


def encrypt(cek, aad, plaintext):
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(cek[32:]), modes.CBC(iv)).encryptor()
    ct = enc.update(padded) + enc.finalize()
    return iv, ct, tag_of(cek[:32], aad, iv, ct)


def decrypt(cek, jwe):
    try:
        iv, ct, tag = unb64(jwe["iv"]), unb64(jwe["ciphertext"]), unb64(jwe["tag"])
    except Exception:
        raise Refused("undecryptable")
    aad = jwe["protected"].encode()
    if len(iv) != 16 or not hmac.compare_digest(tag_of(cek[:32], aad, iv, ct), tag):
        raise Refused("undecryptable")
    try:
        dec = Cipher(algorithms.AES(cek[32:]), modes.CBC(iv)).decryptor()
        padded = dec.update(ct) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except Exception:
        raise Refused("undecryptable")


def thumbprint(jwk):
    canonical = '{"e":"%s","kty":"RSA","n":"%s"}' % (jwk["e"], jwk["n"])
    return b64(hashlib.sha256(canonical.encode()).digest())


def private_key(jwk):
    public = rsa.RSAPublicNumbers(num(jwk["e"]), num(jwk["n"]))
    return rsa.RSAPrivateNumbers(
        num(jwk["p"]), num(jwk["q"]), num(jwk["d"]), num(jwk["dp"]), num(jwk["dq"]), num(jwk["qi"]), public
    ).private_key()


def public_key(jwk):
    return rsa.RSAPublicNumbers(num(jwk["e"]), num(jwk["n"])).public_key()


def header(text):
    return json.loads(unb64(text))


def binding(kind, topic, epoch=None):
    sb = {"kind": kind, "topic": topic}
    if epoch is not None:
        sb["epoch"] = epoch
    sb["from"] = "python"
    sb["mid"] = b64(os.urandom(16))
    return sb


def seal(plaintext, jwk, sb):
    cek = os.urandom(64)
    protected = b64(json.dumps({"enc": "A256CBC-HS512", "sb": sb}, separators=(",", ":")).encode())
    iv, ct, tag = encrypt(cek, protected.encode(), plaintext)
    ek = public_key(jwk).encrypt(cek, OAEP)
    recipient = {"header": {"alg": "RSA-OAEP-256", "kid": thumbprint(jwk)}, "encrypted_key": b64(ek)}
    return {"protected": protected, "recipients": [recipient], "iv": b64(iv), "ciphertext": b64(ct), "tag": b64(tag)}


def open_one(me, kid, rooms, topic, jwe):
    if jwe.get("recipients"):
        mine = [r for r in jwe["recipients"] if r["header"]["kid"] == kid]
        if not mine:
            raise Refused("not_addressed")
        try:
            cek = me.decrypt(unb64(mine[0]["encrypted_key"]), OAEP)
        except Exception:
            cek = os.urandom(64)  # fail like a bad tag (RFC 7516 11.5)
        plaintext = decrypt(cek, jwe)
    else:
        try:
            kid_text = header(jwe["protected"])["kid"]
        except Exception:
            raise Refused("undecryptable")
        if kid_text not in rooms:
            raise Refused("unknown_room_key")
        plaintext = decrypt(rooms[kid_text], jwe)
    sb = header(jwe["protected"])["sb"]
    if sb["topic"] != topic:
        raise Refused("wrong_topic")
    if sb["kind"] == "room-key":
        key = json.loads(plaintext)
        rooms["%s#%d" % (key["room"], key["epoch"])] = unb64(key["k"])
    return sb["kind"], plaintext.decode()


def main():
    request = json.load(sys.stdin)
    me = private_key(request["me"])
    kid = thumbprint(request["me"])
    rooms = {}
    opened = []
    for item in request["envelopes"]:
        try:
            kind, text = open_one(me, kid, rooms, item["topic"], item["jwe"])
            opened.append({"ok": True, "kind": kind, "plaintext": text})
        except Refused as e:
            opened.append({"ok": False, "code": e.code})
    to = request["recipient"]
    room_key = {"room": "py/room", "epoch": 1, "k": b64(os.urandom(64)), "nbf": 1}
    share = seal(json.dumps(room_key).encode(), to, binding("room-key", "py/keys", 1))
    protected = b64(json.dumps(
        {"alg": "dir", "enc": "A256CBC-HS512", "kid": "py/room#1", "sb": binding("room", "py/room", 1)}
    ).encode())
    iv, ct, tag = encrypt(unb64(room_key["k"]), protected.encode(), "room message from python".encode())
    room = {"protected": protected, "iv": b64(iv), "ciphertext": b64(ct), "tag": b64(tag)}
    sealed = seal("sealed by python ✓".encode(), to, binding("sealed", "py/dm"))
    made = {"sealed": sealed, "room_key": share, "room": room, "room_key_value": room_key}
    json.dump({"opened": opened, "made": made}, sys.stdout)


main()
