"""A token issuer for the gateway check, with openssl only (the image has
no Python crypto): an RSA key, its JWKS, and RS256 tokens signed with it.

  jwt.py jwks KEY.pem                 -> the JWKS (kid "vm-1") on stdout
  jwt.py token KEY.pem ISS AUD SUB    -> a token valid for 10 minutes
"""
import base64
import json
import subprocess
import sys
import time


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwks(key):
    out = subprocess.check_output(["openssl", "rsa", "-in", key, "-noout", "-modulus"])
    modulus = bytes.fromhex(out.decode().strip().split("=", 1)[1])
    return {"keys": [{"kty": "RSA", "kid": "vm-1", "alg": "RS256", "use": "sig",
                      "n": b64(modulus), "e": "AQAB"}]}


def token(key, iss, aud, sub):
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "vm-1"}
    claims = {"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + 600}
    signing_input = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
    signature = subprocess.check_output(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input)
    return signing_input.decode() + "." + b64(signature)


if __name__ == "__main__":
    if sys.argv[1] == "jwks":
        print(json.dumps(jwks(sys.argv[2])))
    else:
        print(token(*sys.argv[2:6]))
