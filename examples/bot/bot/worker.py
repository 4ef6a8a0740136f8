"""The periodic work: simulated Telegram updates, processed into the database.

Each tick stands for one incoming update: the user is upserted, the update is
stored as an event and the user's FSM state (aiogram_states) moves on - all in
one transaction, so a crash leaves either the whole update or none of it.
"""

import logging

from psycopg2.extras import Json

from .db import describe

log = logging.getLogger(__name__)

SIMULATED_USERS = (1001, 1002, 1003)
STATES = ('Dialog:greeting', 'Dialog:waiting_message', 'Dialog:answering')


class Worker:
    def __init__(self, db, status, interval, stop):
        self.db, self.status, self.interval, self.stop = db, status, interval, stop
        self.next_update_id = None

    def _resume(self, cur):
        # Like Telegram's getUpdates offset: continue after the last update we processed.
        cur.execute('SELECT coalesce(max(update_id), 0) + 1 FROM events')
        return cur.fetchone()[0]

    def _process(self, cur, update_id):
        user_id = SIMULATED_USERS[update_id % len(SIMULATED_USERS)]
        chat_id = user_id  # private chat: Telegram uses the user id as the chat id
        state = STATES[update_id % len(STATES)]
        cur.execute('INSERT INTO users (id, username, first_seen_at, last_seen_at) VALUES (%s, %s, now(), now()) '
                    'ON CONFLICT (id) DO UPDATE SET last_seen_at = now()', (user_id, f'user{user_id}'))
        # update_id is the primary key, so a retry after a lost COMMIT reply cannot store the update twice.
        cur.execute('INSERT INTO events (update_id, user_id, chat_id, kind, payload) VALUES (%s, %s, %s, %s, %s) '
                    'ON CONFLICT (update_id) DO NOTHING',
                    (update_id, user_id, chat_id, 'message', Json({'text': f'simulated message {update_id}'})))
        cur.execute('INSERT INTO aiogram_states (key, chat_id, user_id, state, data, updated_at) '
                    'VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (key) DO UPDATE '
                    'SET state = EXCLUDED.state, data = EXCLUDED.data, updated_at = now()',
                    (f'fsm:{chat_id}:{user_id}', chat_id, user_id, state,
                     Json({'last_update_id': update_id})))

    def tick(self):
        """Process one update; False (logged) when the database refused it."""
        try:
            if self.next_update_id is None:
                self.next_update_id = self.db.run(self._resume, what='resume')
            update_id = self.next_update_id
            self.db.run(lambda cur: self._process(cur, update_id), what=f'update {update_id}')
        except Exception as exc:  # noqa: BLE001 - the bot must outlive a database outage
            self.status.db_result(describe(exc))
            log.error('Processing an update failed, will retry next tick: %s', describe(exc))
            return False
        self.next_update_id += 1
        self.status.work_succeeded()
        if self.status.work_done == 1 or self.status.work_done % 100 == 0:
            log.info('Processed %d update(s), last update_id %d', self.status.work_done, update_id)
        return True

    def run(self):
        """Tick every interval until the stop event is set."""
        while not self.stop.is_set():
            self.tick()
            self.stop.wait(self.interval)
