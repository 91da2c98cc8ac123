# Generate N ECDSA P-256 self-signed certs for h{i}.example.com into DIR
import sys, os, datetime
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
n, d = int(sys.argv[1]), sys.argv[2]
os.makedirs(d, exist_ok=True)
now = datetime.datetime.now(datetime.timezone.utc)
for i in range(n):
    k = ec.generate_private_key(ec.SECP256R1())
    name = f"h{i}.example.com"
    subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    c = (x509.CertificateBuilder().subject_name(subj).issuer_name(subj).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False).sign(k, hashes.SHA256()))
    open(f"{d}/c{i}.pem", "wb").write(c.public_bytes(serialization.Encoding.PEM))
    open(f"{d}/k{i}.pem", "wb").write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
