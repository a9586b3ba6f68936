#!/usr/bin/env python3
"""Moto (AWS mock) server for the EST server's integration tests.

    python3 tests/moto/est_moto.py --port 5055 --ca-dir DIR

Serves every moto service (we use `iot`, `dynamodb` and `kms`) on 127.0.0.1:PORT,
prints `moto listening on 127.0.0.1:PORT` once it accepts connections and runs
until SIGTERM/SIGINT. On first start a test CA (EC P-256, CN "moto IoT test
CA", 10 years) is written to DIR/ca.key (0600) and DIR/ca.pem; later starts
reuse it.

moto 5.2 differs from real AWS in ways that matter to us, so these patches
are applied in-process before serving:

1. CreateCertificateFromCsr: moto discards the CSR's public key and returns a
   self-signed certificate for a fresh random RSA key. Patched to issue a
   certificate for the CSR's own public key and subject, signed by the test CA
   (issuer = CA subject, random serial, 1 year, clientAuth EKU). CSRs with a
   bad signature are rejected with InvalidRequestException, as on AWS.
2. CreateCertificateFromCsr: moto reads the `setAsActive` query parameter with
   `_get_param`, so the string "false" is truthy and the certificate always
   comes out ACTIVE. Patched to parse it as a boolean (default false).
3. certificateId: unless MOTO_IOT_USE_VALID_CERT is set, moto hashes the PEM
   text. Real AWS uses the SHA-256 of the DER encoding; patched to always do
   so (falling back to moto's PEM hash for input that is not a certificate).
   The ARN and the `certificates` dict key derive from this id, so all other
   operations (Describe/Update/Delete, Attach*/List*) keep working. The
   validity reported by DescribeCertificate is also taken from the
   certificate instead of moto's "now +/- 1 day".

CreateKeysAndCertificate needs no patch: moto returns the private key that the
certificate certifies (RSA 2048, issuer "Moto"); its id is fixed by patch 3.

One gap is in DynamoDB:

4. Conditional writes and TransactWriteItems: moto checks a condition and
   then applies the write without holding any lock, so two concurrent
   requests can both pass `attribute_not_exists(pk)` on the same key (real
   DynamoDB serialises writes to an item, and a transaction either wins
   whole or is cancelled). The launcher serves DynamoDB requests one at a
   time; the other services stay concurrent.

And in KMS (the CA key in KMS):

5. Sign and Verify with MessageType=DIGEST: moto ignores MessageType and
   hashes the message again (ECDSA_SHA_256 signs SHA-256(digest)), so a
   signature over a digest made by the caller never verifies against the
   data. Patched so that DIGEST signs / verifies the given digest as it is
   (cryptography's Prehashed), with AWS's length check (32, 48 or 64 bytes
   for the _SHA_256/_384/_512 algorithms; otherwise ValidationException).
   GetPublicKey also returns the bare key id where AWS returns the key ARN,
   and no KeySpec (only the deprecated CustomerMasterKeySpec); patched to
   return both as AWS does. P-384 and RSA 2048/3072/4096 keys need nothing
   more (their SubjectPublicKeyInfo and PKCS#1 v1.5 signatures are right).
"""
import argparse
import datetime as dt
import os
import signal
import json
import sys
import threading

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from moto.core.responses import ActionResult
from moto.iot import models as iot_models
from moto.iot import responses as iot_responses
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from moto.iot.exceptions import InvalidRequestException
from moto.kms import responses as kms_responses
from moto.kms import utils as kms_utils
from moto.kms.exceptions import ValidationException as KmsValidationException
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

CA_CN = "moto IoT test CA"


def _now():
    return dt.datetime.now(dt.timezone.utc)


def load_or_create_ca(ca_dir):
    """Return (key, cert) of the test CA in ca_dir, creating it if absent."""
    key_path, pem_path = os.path.join(ca_dir, "ca.key"), os.path.join(ca_dir, "ca.pem")
    if os.path.exists(key_path) and os.path.exists(pem_path):
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        with open(pem_path, "rb") as f:
            return key, x509.load_pem_x509_certificate(f.read())
    os.makedirs(ca_dir, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_CN)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    with open(pem_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue_from_csr(ca_key, ca_cert, csr_pem):
    """Sign the CSR's public key and subject with the test CA; return PEM text."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise InvalidRequestException("Invalid certificate signing request")
    if not csr.is_signature_valid:
        raise InvalidRequestException("CSR signature is not valid")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def apply_patches(ca_key, ca_cert):
    backend_cls = iot_models.IoTBackend
    cert_cls = iot_models.FakeCertificate

    # Patch 1: certify the CSR's own key with the test CA.
    def create_certificate_from_csr(self, csr, set_as_active):
        pem = issue_from_csr(ca_key, ca_cert, csr)
        return self.register_certificate(
            pem, ca_certificate_pem=None, set_as_active=set_as_active, status="INACTIVE"
        )

    backend_cls.create_certificate_from_csr = create_certificate_from_csr

    # Patch 2: parse setAsActive as a boolean, not a (always truthy) string.
    def response_create_certificate_from_csr(self):
        cert = self.iot_backend.create_certificate_from_csr(
            self._get_param("certificateSigningRequest"),
            set_as_active=self._get_bool_param("setAsActive", False),
        )
        return ActionResult(
            {
                "certificateId": cert.certificate_id,
                "certificateArn": cert.arn,
                "certificatePem": cert.certificate_pem,
            }
        )

    iot_responses.IoTResponse.create_certificate_from_csr = response_create_certificate_from_csr

    # Patch 3: certificateId = sha256(DER), validity taken from the certificate.
    def compute_cert_id(self, certificate_pem):
        try:
            return self.compute_der_cert_id(certificate_pem)
        except ValueError:
            return self.compute_pem_cert_id(certificate_pem)

    cert_cls.compute_cert_id = compute_cert_id
    orig_init = cert_cls.__init__

    def cert_init(self, certificate_pem, *args, **kwargs):
        orig_init(self, certificate_pem, *args, **kwargs)
        try:
            c = x509.load_pem_x509_certificate(certificate_pem.encode())
        except ValueError:
            return
        self.validity_not_before = c.not_valid_before_utc
        self.validity_not_after = c.not_valid_after_utc

    cert_cls.__init__ = cert_init


DIGEST_LENGTHS = {"SHA_256": 32, "SHA_384": 48, "SHA_512": 64}


def apply_kms_patches():
    """Patch 5: MessageType=DIGEST signs the digest itself; GetPublicKey as on AWS."""
    digest_mode = threading.local()  # set while one DIGEST request is served

    def with_digest(operation):
        def handler(self):
            if self._get_param("MessageType") != "DIGEST":
                return operation(self)
            algorithm = self._get_param("SigningAlgorithm") or ""
            expected = DIGEST_LENGTHS.get(algorithm[-7:])
            if expected is not None and len(self._get_param("Message") or b"") != expected:
                raise KmsValidationException(
                    f"Digest is invalid length for algorithm {algorithm}."
                )
            digest_mode.on = True
            try:
                return operation(self)
            finally:
                digest_mode.on = False

        return handler

    response_cls = kms_responses.KmsResponse
    response_cls.sign = with_digest(response_cls.sign)
    response_cls.verify = with_digest(response_cls.verify)

    def prehashed(hash_algorithm):
        return Prehashed(hash_algorithm) if getattr(digest_mode, "on", False) else hash_algorithm

    ec_cls, rsa_cls = kms_utils.ECDSAPrivateKey, kms_utils.RSAPrivateKey

    def ec_sign(self, message, signing_algorithm):
        kms_utils.validate_signing_algorithm(signing_algorithm, self.valid_signing_algorithms)
        hash_algorithm = prehashed(self._ECDSAPrivateKey__hash_algorithm(signing_algorithm))
        return self.private_key.sign(message, ec.ECDSA(hash_algorithm))

    def ec_verify(self, message, signature, signing_algorithm):
        kms_utils.validate_signing_algorithm(signing_algorithm, self.valid_signing_algorithms)
        hash_algorithm = prehashed(self._ECDSAPrivateKey__hash_algorithm(signing_algorithm))
        try:
            self.private_key.public_key().verify(signature, message, ec.ECDSA(hash_algorithm))
            return True
        except InvalidSignature:
            return False

    def rsa_sign(self, message, signing_algorithm):
        kms_utils.validate_signing_algorithm(
            signing_algorithm, kms_utils.SigningAlgorithm.rsa_signing_algorithms()
        )
        pad, hash_algorithm = self._RSAPrivateKey__padding_and_hash_algorithm(signing_algorithm)
        return self.private_key.sign(message, pad, prehashed(hash_algorithm))

    def rsa_verify(self, message, signature, signing_algorithm):
        kms_utils.validate_signing_algorithm(
            signing_algorithm, kms_utils.SigningAlgorithm.rsa_signing_algorithms()
        )
        pad, hash_algorithm = self._RSAPrivateKey__padding_and_hash_algorithm(signing_algorithm)
        try:
            self.private_key.public_key().verify(
                signature, message, pad, prehashed(hash_algorithm)
            )
            return True
        except InvalidSignature:
            return False

    ec_cls.sign, ec_cls.verify = ec_sign, ec_verify
    rsa_cls.sign, rsa_cls.verify = rsa_sign, rsa_verify

    original_get_public_key = response_cls.get_public_key

    def get_public_key(self):
        result = json.loads(original_get_public_key(self))
        key = self.kms_backend.describe_key(self._get_param("KeyId"))
        result["KeyId"] = key.arn
        result["KeySpec"] = key.key_spec
        return json.dumps(result)

    response_cls.get_public_key = get_public_key


def serialise_dynamodb(app):
    """Patch 4: one DynamoDB request at a time (the JSON protocol names its
    operation in X-Amz-Target: DynamoDB_20120810.<Operation>)."""
    lock = threading.Lock()

    def wrapped(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                # The body is produced inside the lock: moto does its work there.
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--ca-dir", required=True)
    args = parser.parse_args()

    apply_patches(*load_or_create_ca(args.ca_dir))
    apply_kms_patches()
    app = serialise_dynamodb(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", args.port, app, threaded=True)  # bound + listening

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"moto listening on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
