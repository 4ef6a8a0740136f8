"""A throwaway PostgreSQL *container* on the local Docker engine, for modules that work through
`docker exec` (pg_backup runs pg_dump inside the database container; db_health inspects it).

The image defaults to soulnear/postgres:15 (built by scripts/images.sh when no registry is
reachable); override with SOULNEAR_TEST_PG_IMAGE.
"""

import os
import subprocess
import uuid


from pgclient import ServerClient

IMAGE = os.environ.get('SOULNEAR_TEST_PG_IMAGE', 'soulnear/postgres:15')
PASSWORD = 'test-container-secret'


def docker(*args, check=True, timeout=120):
    proc = subprocess.run(['docker'] + list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError('docker %s failed: %s' % (' '.join(args[:2]), proc.stderr.strip()))
    return proc


class PgContainer(ServerClient):
    def __init__(self, image=IMAGE, name=None, extra_args=()):
        self.image = image
        self.name = name or 'soulnear-test-pg-' + uuid.uuid4().hex[:8]
        self.extra_args = list(extra_args)
        self.host = '127.0.0.1'
        self.port = None
        self.password = PASSWORD

    def start(self, timeout=90):
        if docker('info', check=False).returncode != 0:
            raise RuntimeError('no Docker engine answers; run scripts/docker-engine.sh (make test does)')
        if docker('image', 'inspect', self.image, check=False).returncode != 0:
            raise RuntimeError('image %s is missing; run scripts/images.sh (make test does)' % self.image)
        docker('run', '-d', '--name', self.name, '-e', 'POSTGRES_PASSWORD=' + self.password,
               '-p', '127.0.0.1::5432',
               '--health-cmd', 'pg_isready -h 127.0.0.1 -U postgres -d postgres', '--health-interval', '1s',
               *self.extra_args, self.image)
        self.port = int(docker('port', self.name, '5432/tcp').stdout.strip().splitlines()[0].rsplit(':', 1)[1])
        self.wait_ready(timeout)
        return self

    def not_ready(self, exc):
        logs = docker('logs', '--tail', '30', self.name, check=False)
        return RuntimeError('container %s did not accept connections (%s): %s%s'
                            % (self.name, exc, logs.stdout, logs.stderr))

    def remove(self):
        docker('rm', '-f', '-v', self.name, check=False)

    def params(self, db='postgres', user='postgres', password=None):
        return dict(login_host=self.host, login_port=self.port, login_user=user,
                    login_password=self.password if password is None else password, login_db=db,
                    connect_timeout=5)
