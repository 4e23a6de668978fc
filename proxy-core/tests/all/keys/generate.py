#!/usr/bin/env python3
"""Regenerates the JWT test fixtures of filter_jwt.rs / filter_authz.rs (TEST KEYS ONLY).

Needs only python3 (stdlib) and the openssl CLI. Keys are created once (kept if present);
tokens are re-signed on every run (RS256 is deterministic, ES256 is not). See README.md.
"""

import base64
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER = "https://issuer.weft.test"
AUDIENCE = "weft-api"
FAR_FUTURE = 4102444800  # 2100-01-01T00:00:00Z
LONG_AGO = 1000000000  # 2001-09-09


def path(name):
    return os.path.join(HERE, name)


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, check=True, capture_output=True).stdout


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def int_bytes(value):
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def ensure_keys():
    if not os.path.exists(path("rsa_private.pem")):
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path("rsa_private.pem"))
    if not os.path.exists(path("rsa_other_private.pem")):
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path("rsa_other_private.pem"))
    if not os.path.exists(path("ec_private.pem")):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path("ec_private.pem"))


def rsa_jwk(private_pem, kid):
    modulus = openssl("rsa", "-in", private_pem, "-noout", "-modulus").decode().strip().split("=", 1)[1]
    text = openssl("rsa", "-in", private_pem, "-noout", "-text").decode()
    exponent = int(text.split("publicExponent:", 1)[1].split("(", 1)[0].strip())
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64url(int_bytes(int(modulus, 16))), "e": b64url(int_bytes(exponent))}


def ec_jwk(private_pem, kid):
    # The uncompressed public point, 04 || X || Y, is the last 65 bytes of the DER public key.
    der = openssl("pkey", "-in", private_pem, "-pubout", "-outform", "DER")
    point = der[-65:]
    assert point[0] == 4
    return {"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
            "x": b64url(point[1:33]), "y": b64url(point[33:])}


def der_ecdsa_to_raw(der):
    # SEQUENCE { INTEGER r, INTEGER s } -> r || s, 32 bytes each.
    assert der[0] == 0x30
    index = 2 if der[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        assert der[index] == 0x02
        length = der[index + 1]
        value = int.from_bytes(der[index + 2:index + 2 + length], "big")
        out += value.to_bytes(32, "big")
        index += 2 + length
    return out


def sign(header, claims, private_pem, alg):
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    signature = openssl("dgst", "-sha256", "-sign", private_pem, data=signing_input.encode())
    if alg == "ES256":
        signature = der_ecdsa_to_raw(signature)
    return signing_input + "." + b64url(signature)


def main():
    ensure_keys()
    rsa_pem, other_pem, ec_pem = path("rsa_private.pem"), path("rsa_other_private.pem"), path("ec_private.pem")
    jwks = {"keys": [rsa_jwk(rsa_pem, "rsa-1"), ec_jwk(ec_pem, "ec-1")]}
    with open(path("jwks.json"), "w") as out:
        json.dump(jwks, out, indent=2)
        out.write("\n")

    rs = {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}
    es = {"alg": "ES256", "typ": "JWT", "kid": "ec-1"}
    alice = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": 1700000000, "exp": FAR_FUTURE,
             "groups": ["admins", "dev"], "email": "alice@weft.test", "level": 3}
    bob = {"iss": ISSUER, "sub": "bob", "aud": [AUDIENCE, "other"], "iat": 1700000000, "exp": FAR_FUTURE,
           "groups": ["dev"]}
    tokens = {
        "rs256_alice": sign(rs, alice, rsa_pem, "RS256"),
        "es256_bob": sign(es, bob, ec_pem, "ES256"),
        "rs256_expired": sign(rs, dict(alice, exp=LONG_AGO), rsa_pem, "RS256"),
        "rs256_not_yet_valid": sign(rs, dict(alice, nbf=FAR_FUTURE), rsa_pem, "RS256"),
        "rs256_wrong_issuer": sign(rs, dict(alice, iss="https://evil.test"), rsa_pem, "RS256"),
        "rs256_wrong_audience": sign(rs, dict(alice, aud="somebody-else"), rsa_pem, "RS256"),
        "rs256_unknown_key": sign(rs, alice, other_pem, "RS256"),
    }
    for name, token in tokens.items():
        with open(path(name + ".jwt"), "w") as out:
            out.write(token + "\n")


if __name__ == "__main__":
    main()
