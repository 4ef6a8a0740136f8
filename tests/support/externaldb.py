"""A PostgreSQL the project did not deploy, standing in for a managed service: its own CA, a server certificate for
127.0.0.1 and localhost, and a pg_hba.conf that accepts TLS connections only (hostnossl is rejected), so any client
that gets in used TLS. A second, unrelated CA is made for the wrong-CA cases.

The server is a plain container of the test image (not the postgres role's container: no init script, no project
settings), published on a random port of 127.0.0.1 - or, given a Docker network and an address on it, reachable at
that address (the Molecule VPSes reach it there, as a managed service on the private network).
"""

import os
import subprocess
import uuid

from pgcontainer import IMAGE, PgContainer, docker

HBA = """# TLS only, like a managed service
local   all  all                 trust
hostnossl all all 0.0.0.0/0      reject
hostnossl all all ::/0           reject
hostssl all  all  0.0.0.0/0      scram-sha-256
hostssl all  all  ::/0           scram-sha-256
"""


def openssl(*args, cwd):
    subprocess.run(['openssl'] + list(args), cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory, name):
    """A self-signed CA: (certificate path, key path)."""
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=%s' % name,
            '-keyout', name + '.key', '-out', name + '.crt', cwd=directory)
    return os.path.join(directory, name + '.crt'), os.path.join(directory, name + '.key')


def make_server_cert(directory, ca_name, hosts=('127.0.0.1', 'localhost')):
    """server.crt/server.key signed by ca_name, valid for hosts (IP or DNS subject alternative names)."""
    san = ','.join(('IP:%s' % h) if h.replace('.', '').isdigit() else ('DNS:%s' % h) for h in hosts)
    with open(os.path.join(directory, 'san.cnf'), 'w') as handle:
        handle.write('subjectAltName=%s\n' % san)
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=%s' % hosts[0], '-keyout', 'server.key',
            '-out', 'server.csr', cwd=directory)
    openssl('x509', '-req', '-in', 'server.csr', '-CA', ca_name + '.crt', '-CAkey', ca_name + '.key',
            '-CAcreateserial', '-days', '2', '-extfile', 'san.cnf', '-out', 'server.crt', cwd=directory)


class ExternalPg(PgContainer):
    """A TLS-only PostgreSQL container; ca_file verifies it, wrong_ca_file does not."""

    def __init__(self, directory, image=IMAGE, network=None, address=None):
        super().__init__(image=image, name='soulnear-test-external-' + uuid.uuid4().hex[:8])
        self.network, self.address = network, address
        self.directory = str(directory)
        self.certs = os.path.join(self.directory, 'certs')
        os.makedirs(self.certs, mode=0o755, exist_ok=True)
        self.ca_file, _ = make_ca(self.certs, 'ca')
        self.wrong_ca_file, _ = make_ca(self.certs, 'wrong-ca')
        make_server_cert(self.certs, 'ca', hosts=((address,) if address else ()) + ('127.0.0.1', 'localhost'))
        with open(os.path.join(self.certs, 'pg_hba.conf'), 'w') as handle:
            handle.write(HBA)
        os.chmod(os.path.join(self.certs, 'server.key'), 0o600)
        for name in ('server.key', 'server.crt', 'pg_hba.conf'):
            os.chown(os.path.join(self.certs, name), 999, 999)  # the server's uid in the image

    def start(self, timeout=90):
        where = ['--network', self.network, '--ip', self.address] if self.network else ['-p', '127.0.0.1::5432']
        docker('run', '-d', '--name', self.name, '-e', 'POSTGRES_PASSWORD=' + self.password,
               *where, '-v', '%s:/certs:ro' % self.certs, self.image,
               'postgres', '-c', 'ssl=on', '-c', 'ssl_cert_file=/certs/server.crt',
               '-c', 'ssl_key_file=/certs/server.key', '-c', 'hba_file=/certs/pg_hba.conf')
        return self.published(timeout)

    def published(self, timeout=90):
        """Read the published port (Docker picks a new one when a stopped container starts) and wait for the server."""
        if self.network:
            self.host, self.port = self.address, 5432
            self.wait_ready(timeout)
            return self
        self.port = int(docker('port', self.name, '5432/tcp').stdout.strip().splitlines()[0].rsplit(':', 1)[1])
        self.wait_ready(timeout)
        return self

    def params(self, db='postgres', user='postgres', password=None, ca_file=None):
        """Module-style parameters with sslmode verify-full against ca_file (default: the right CA)."""
        params = super().params(db=db, user=user, password=password)
        params.update(ssl_mode='verify-full', ca_cert=ca_file or self.ca_file)
        return params
