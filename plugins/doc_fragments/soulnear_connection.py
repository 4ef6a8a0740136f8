# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by every SoulNear module (connection_argument_spec in module_utils/soulnear/pg.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    DOCUMENTATION = r'''
options:
  login_user:
    description: Role to connect as. A PostgreSQL role name of 1 to 63 bytes.
    type: str
    default: postgres
  login_password:
    description: Password of O(login_user).
    type: str
    default: ''
  login_host:
    description: Host to connect to. Empty means the local Unix socket.
    type: str
    default: ''
  login_unix_socket:
    description: Directory of the Unix socket; takes precedence over O(login_host). Empty, or an absolute path of a
      directory.
    type: str
    default: ''
  login_port:
    description: Port to connect to, 1 to 65535.
    type: int
    default: 5432
    aliases: [port]
  login_db:
    description: Database to connect to. At most 63 bytes.
    type: str
    default: ''
    aliases: [db]
  connect_timeout:
    description: Seconds to wait for one connection attempt, 1 to 86400.
    type: int
    default: 10
  ssl_mode:
    description: libpq sslmode.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: Root certificate file for O(ssl_mode=verify-ca) or O(ssl_mode=verify-full). Empty, or an
      absolute path of a file.
    type: str
    aliases: [ssl_rootcert]
  retries:
    description:
      - How many times a connection-class failure is retried (backoff 0.5 s, 1 s, 2 s), 0 to 100.
      - Retried are SQLSTATE class 08 except 08007, 57P01, 57P03, 53300, 25006 (a primary demoted by a switchover,
        the retry reconnects) and connection errors without a code; authentication, permission, syntax and data
        errors and TLS failures never are.
    type: int
    default: 3
'''

    # pg_backup and pg_restore: where the tools run for a database this deployment does not own.
    CLIENT_IMAGE = r'''
options:
  client_image:
    description:
      - For a database this deployment does not own (an external or managed server, a Patroni cluster, the database
        host of a two-host deployment) - an image with C(pg_dump) and C(pg_restore) of the server's major version or
        newer. The tools then run in a throwaway container of it on the host's network (C(docker run --rm --network
        host)), reach the server at O(login_host):O(login_port) with O(ssl_mode) and O(ca_cert), and O(container) is
        not used.
      - Empty (the default) runs them in O(container). Otherwise a Docker image reference.
    type: str
    default: ''
'''
