"""Poll getUpdates for ever, the way every polling bot does: one long poll at a time, offset confirmed. Telegram
answers 409 Conflict ("terminated by other getUpdates request") when a second copy polls the same token; this bot
logs that answer, which the deployment's error patterns catch."""

import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request

TOKEN = os.environ['BOT_TOKEN']
URL = 'https://api.telegram.org/bot%s/getUpdates?timeout=%d&offset=%d'
VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'VERSION')).read().strip()


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    context = ssl.create_default_context(cafile=os.environ.get('SSL_CERT_FILE'))
    offset = 0
    print('poller bot version %s polling' % VERSION, flush=True)
    while True:
        try:
            with urllib.request.urlopen(URL % (TOKEN, 2, offset), timeout=20, context=context) as response:
                for update in json.load(response).get('result', []):
                    # What this bot does with an update: one log line (the test counts them on both hosts).
                    print('processed update %d' % update['update_id'], flush=True)
                    offset = max(offset, update['update_id'] + 1)
        except urllib.error.HTTPError as exc:
            print('getUpdates answered %s: %s' % (exc.code, exc.read().decode('utf-8', 'replace')[:200]), flush=True)
            time.sleep(1)
        except (OSError, ValueError) as exc:
            print('getUpdates failed: %s' % exc, flush=True)
            time.sleep(1)


if __name__ == '__main__':
    main()
