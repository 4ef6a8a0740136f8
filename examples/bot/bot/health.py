"""Health: shared status, the database monitor thread and the GET /health endpoint."""

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .db import describe

log = logging.getLogger(__name__)


class Status:
    """What /health reports; written by the worker and the monitor, read by the HTTP thread."""

    def __init__(self, work_interval):
        self.max_age = 3 * work_interval  # healthy while the last good work is this recent
        self._lock = threading.Lock()
        self.phase = 'starting'
        self.work_done = 0
        self.last_work_at = None  # wall clock, for people
        self._last_work_mono = None  # monotonic, for the age check
        self.db_error = None  # last database failure, None after a success

    def set_phase(self, phase):
        with self._lock:
            self.phase = phase

    def work_succeeded(self):
        with self._lock:
            self.work_done += 1
            self.last_work_at = datetime.now(UTC).isoformat(timespec='seconds')
            self._last_work_mono = time.monotonic()
            self.db_error = None

    def db_result(self, error=None):
        with self._lock:
            self.db_error = error

    def report(self):
        """(http status, body) for GET /health."""
        with self._lock:
            body = {'status': 'ok', 'database': 'ok' if self.db_error is None else 'error',
                    'last_work_at': self.last_work_at, 'work_done': self.work_done}
            if self.phase != 'running':
                body.update(status=self.phase, reason=f'bot is {self.phase}')
            elif self.db_error is not None:
                body.update(status='error', reason=self.db_error)
            elif self._last_work_mono is None or time.monotonic() - self._last_work_mono > self.max_age:
                body.update(status='stale', reason=f'no successful work in the last {self.max_age:g}s')
            return (200 if body['status'] == 'ok' else 503), body


class HealthMonitor(threading.Thread):
    """SELECT 1 every BOT_HEALTH_MONITOR_INTERVAL; logs failures and the recovery after them."""

    def __init__(self, db, status, interval, stop):
        super().__init__(name='db-health-monitor', daemon=True)
        self.db, self.status, self.interval, self.stop = db, status, interval, stop

    def run(self):
        log.info('Database health monitor started')
        failing = False
        while not self.stop.wait(self.interval):
            try:
                self.db.run(lambda cur: cur.execute('SELECT 1'), what='health check')
            except Exception as exc:  # noqa: BLE001 - any failure is reported, the monitor keeps going
                self.status.db_result(describe(exc))
                log.error('Database health check failed: %s', describe(exc))
                failing = True
                continue
            self.status.db_result(None)
            if failing:
                log.info('Database connection recovered')
                failing = False


def start_http_server(port, status):
    """Serve GET /health on 0.0.0.0:port from a daemon thread; returns the server (shutdown() stops it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's naming
            if self.path.split('?')[0] != '/health':
                code, body = 404, {'error': 'not found'}
            else:
                code, body = status.report()
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt, *args):
            pass  # the Docker healthcheck polls every 30 s; access lines would drown the real log

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            # socketserver prints a traceback here, which a deploy reads as an error pattern: a client that went
            # away early (BrokenPipe, reset) is one line, anything else one line with its type.
            error = sys.exc_info()[1]
            gone = isinstance(error, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError))
            log.warning('health endpoint: %s from %s: %s', 'client disconnected early' if gone else
                        'request failed', client_address[0], type(error).__name__)

    server = Server(('0.0.0.0', port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.2},
                     name='health-http', daemon=True).start()
    return server
