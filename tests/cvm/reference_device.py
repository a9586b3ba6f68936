#!/usr/bin/env python3
"""A device written only against the AWS reference certificate vending
machine's documented API (awslabs/aws-iot-certificate-vending-machine):

    GET <api>/getcert?serialNumber=<serial>&deviceToken=<token>
    -> {"certificateArn"?, "certificateId", "certificatePem",
        "keyPair": {"PublicKey", "PrivateKey"}, "RootCA"}

Standard library only (urllib + ssl), nothing of this project's client.

usage: reference_device.py <api-url> <serial> <token> <server-trust.pem> <out-dir>
Writes <out-dir>/cert.pem, key.pem, root.pem; prints the certificateId.
On an HTTP error prints `HTTP <status> <body>` and exits 2.
"""
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request


def main():
    api, serial, token, trust, out = sys.argv[1:6]
    query = urllib.parse.urlencode({"serialNumber": serial, "deviceToken": token})
    context = ssl.create_default_context(cafile=trust)
    try:
        with urllib.request.urlopen(f"{api}?{query}", context=context, timeout=30) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        print(f"HTTP {error.code} {error.read().decode()}")
        sys.exit(2)
    os.makedirs(out, exist_ok=True)
    files = {
        "cert.pem": body["certificatePem"],
        "key.pem": body["keyPair"]["PrivateKey"],
        "root.pem": body["RootCA"],
    }
    for name, text in files.items():
        path = os.path.join(out, name)
        with open(path, "w") as f:
            f.write(text)
        if name == "key.pem":
            os.chmod(path, 0o600)
    assert body["keyPair"]["PublicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    print(body["certificateId"])


if __name__ == "__main__":
    main()
