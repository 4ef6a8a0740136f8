# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SCRAM-SHA-256 password verifiers computed on the client, as PostgreSQL stores them (pg_authid.rolpassword).

`ALTER ROLE ... PASSWORD '<verifier>'` stores a verifier given in this format as it is (whatever password_encryption
says), so the clear password never reaches the server: not its network, not a statement it could log, not a
session whose statement logging would have to be switched off first (a superuser's privilege).

    SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>

    SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)      (RFC 5802, RFC 7677)
    StoredKey      = SHA-256(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

SASLprep (RFC 4013) is applied the way PostgreSQL's own pg_saslprep() (src/common/saslprep.c) applies it, on the
server when it builds a verifier and in libpq when a client logs in, so both sides derive the same key:

- a password of ASCII characters only is used as it is (no step below; also control characters);
- otherwise: non-ASCII spaces (RFC 3454 C.1.2) become U+0020, characters "commonly mapped to nothing" (B.1) are
  dropped, then the result is normalised to NFKC;
- when the mapped string (before the normalisation, as pg_saslprep checks it) is empty, holds a prohibited
  character (C.1.2-C.9) or one unassigned in Unicode 3.2 (A.1), or breaks the bidirectional rules (RFC 3454
  section 6), PostgreSQL uses the password's UTF-8 bytes unchanged - and so does this module.

The tables are Python's stringprep module (RFC 3454, Unicode 3.2, exactly the tables pg_saslprep carries); the
NFKC step uses Python's unicodedata, whose data is newer than 3.2 like PostgreSQL's own. A character assigned
after Unicode 3.2 is in A.1, which makes the whole password prohibited (used unchanged) before any normalisation
could differ, so the two agree (tests/integration/module_utils/test_scram.py checks both against PostgreSQL 15 and
17).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata

PREFIX = 'SCRAM-SHA-256$'
# PostgreSQL's defaults (SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN; scram_iterations in 16 and later).
ITERATIONS = 4096
SALT_BYTES = 16
# What a verifier looks like: base64 fields only, so it can be written into SQL text as a literal.
VERIFIER = re.compile(r'^SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*:[A-Za-z0-9+/]+=*$')

_PROHIBITED = (stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22, stringprep.in_table_c3,
               stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
               stringprep.in_table_c8, stringprep.in_table_c9, stringprep.in_table_a1)


def saslprep(password):
    """The bytes PostgreSQL derives its key from: SASLprep'd UTF-8, or the password's UTF-8 bytes unchanged when
    SASLprep refuses it (see the module's docstring)."""
    raw = password.encode('utf-8')
    if all(ord(c) < 0x80 for c in password):
        return raw
    mapped = ''.join(' ' if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c))
    if not mapped or any(check(c) for c in mapped for check in _PROHIBITED):
        return raw
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped) or not (
                stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return raw
    return unicodedata.normalize('NFKC', mapped).encode('utf-8')


def _b64(data):
    return base64.b64encode(data).decode('ascii')


def _keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac('sha256', saslprep(password), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b'Client Key', hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b'Server Key', hashlib.sha256).digest()
    return stored_key, server_key


def verifier(password, salt=None, iterations=ITERATIONS):
    """The SCRAM-SHA-256 verifier of password (a new random salt unless one is given, as bytes)."""
    if not isinstance(password, str) or password == '':
        raise ValueError('a SCRAM verifier needs a password that is a non-empty string')
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    stored_key, server_key = _keys(password, salt, int(iterations))
    return '%s%d:%s$%s:%s' % (PREFIX, int(iterations), _b64(salt), _b64(stored_key), _b64(server_key))


def parse(stored):
    """(iterations, salt, StoredKey, ServerKey) of a stored verifier; None when it is not one."""
    if not stored or not VERIFIER.match(stored):
        return None
    head, keys = stored[len(PREFIX):].split('$', 1)
    iterations, salt = head.split(':', 1)
    stored_key, server_key = keys.split(':', 1)
    try:
        return (int(iterations), base64.b64decode(salt, validate=True), base64.b64decode(stored_key, validate=True),
                base64.b64decode(server_key, validate=True))
    except ValueError:
        return None


def matches(stored, password):
    """Does the stored SCRAM verifier accept password? (Both keys compared, in constant time.)"""
    parsed = parse(stored)
    if parsed is None or not password:
        return False
    iterations, salt, stored_key, server_key = parsed
    mine = _keys(password, salt, iterations)
    return hmac.compare_digest(mine[0], stored_key) and hmac.compare_digest(mine[1], server_key)
