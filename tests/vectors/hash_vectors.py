#!/usr/bin/env python3
"""Key -> partition test vectors for clients in other languages.

A reference implementation of README's "Key -> partition" written from
that text alone (not from runtime/ck_hash.c), and the vectors it gives:

    python3 tests/vectors/hash_vectors.py          # rewrites tests/vectors/hash.json
    python3 tests/vectors/hash_vectors.py --check  # exits 1 if the file differs

tests/lua/vectors_spec.lua checks the C hasher against the same file, so the
spec, the file and the runtime cannot drift apart. A client proves it routes
like clusterkit by reproducing every vector: for each case, hash `key` (its
UTF-8 bytes, or the bytes of `key_hex` when given) with `algorithm`,
`partition_count` and `hash_tags`, and compare with `partition`.
"""

import hashlib
import json
import os
import sys

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hash.json")
MASK = (1 << 64) - 1


def tagged(key):
    """Redis Cluster's rule: the bytes between the first '{' and the first
    '}' after it, if there is at least one; else the whole key."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            return key[s + 1:e]
    return key


def fnv1a64_fmix64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & MASK
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & MASK
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & MASK
    h ^= h >> 33
    return h


def md5_u32(data):
    return int.from_bytes(hashlib.md5(data).digest()[:4], "big")


ALGORITHMS = {"fnv1a64": fnv1a64_fmix64, "md5": md5_u32}


def partition(algorithm, partition_count, hash_tags, key):
    data = tagged(key) if hash_tags else key
    return ALGORITHMS[algorithm](data) % partition_count


KEYS = [
    "", "a", "b", "key", "user:42", "user:43", "user:{42}:cart", "user:{42}:profile", "{42}",
    "{}", "{}{42}", "{", "}", "}{", "a{b", "a}b{c}", "{{x}}", "{x}}", "{a}{b}", "x{ }y",
    "order/2026/12/02/000123", "session:9f86d081884c7d65", "Ünïcödé", "日本語のキー", "emoji 🚀",
    "with space", "tab\there", "new\nline", "quote\"d", "back\\slash", "0", "-1", "k" * 300,
]
BINARY = ["00", "ff", "00ff10", "7b00ff7d", "c328"]   # bytes that are not UTF-8 text
COUNTS = [1, 2, 7, 16, 64, 271, 1024, 4096, 65536]


def vectors():
    cases = []
    for algorithm in ("fnv1a64", "md5"):
        for hash_tags in (True, False):
            for n in COUNTS:
                for k in KEYS:
                    cases.append({"algorithm": algorithm, "partition_count": n, "hash_tags": hash_tags,
                                  "key": k, "partition": partition(algorithm, n, hash_tags, k.encode())})
                for hx in BINARY:
                    cases.append({"algorithm": algorithm, "partition_count": n, "hash_tags": hash_tags,
                                  "key_hex": hx,
                                  "partition": partition(algorithm, n, hash_tags, bytes.fromhex(hx))})
    return {
        "description": "clusterkit key -> partition vectors; see README 'Key -> partition'. "
                       "Hash key's UTF-8 bytes (or key_hex's bytes) with algorithm, partition_count and "
                       "hash_tags; the answer is partition (partition-N in the API).",
        "cases": cases,
    }


def render():
    """One case per line, so that a diff shows which cases changed."""
    v = vectors()
    lines = [json.dumps(c, ensure_ascii=False, sort_keys=True) for c in v["cases"]]
    return '{"description": %s,\n"cases": [\n%s\n]}\n' % (
        json.dumps(v["description"], ensure_ascii=False), ",\n".join(lines))


def main():
    text = render()
    if "--check" in sys.argv[1:]:
        with open(PATH, encoding="utf-8") as f:
            if f.read() != text:
                print("%s differs from the reference implementation: run %s" % (PATH, sys.argv[0]))
                return 1
        print("%s: %d cases match the reference implementation" % (PATH, len(vectors()["cases"])))
        return 0
    with open(PATH, "w", encoding="utf-8") as f:
        f.write(text)
    print("wrote %s" % PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
