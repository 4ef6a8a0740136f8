"""The audit log (module_utils/soulnear/audit.py): one JSON line per event, written by the modules."""

import json
import os

from ansible.module_utils.soulnear import audit
from ansible.module_utils.soulnear.deploy_common import safe_name
from ansible.module_utils.soulnear.redeploy import repository_of


def test_one_line_per_record_with_the_common_fields_first(tmp_path):
    log = str(tmp_path / 'log' / 'audit.log')
    audit.record(log, 'deploy', who='alice@laptop', from_version='a1', to_version='b2', duration=12.3456,
                 downtime=1.2, applied=['004_x.sql'], backup='/b/pre_deploy_b2.dump')
    audit.record(log, 'rollback', result='rolled back', failed_step='wait_healthy')
    lines = open(log).read().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first)[:len(audit.FIELDS)] == list(audit.FIELDS)
    assert (first['event'], first['who'], first['from_version'], first['to_version'], first['result']) == \
        ('deploy', 'alice@laptop', 'a1', 'b2', 'success')
    assert first['duration'] == 12.346 and first['applied'] == ['004_x.sql']
    second = audit.read(log)[1]
    assert (second['who'], second['result'], second['failed_step'], second['downtime']) == \
        ('unknown', 'rolled back', 'wait_healthy', None)
    assert oct(os.stat(log).st_mode & 0o777) == '0o640'


def test_extra_fields_never_replace_the_common_ones(tmp_path):
    record = audit.entry('restore', who='bob', time='forged', backup='x.dump')
    assert record['time'] != 'forged' and record['backup'] == 'x.dump'


def test_names_used_by_the_redeploy():
    assert repository_of('soulnear/bot:3f9c2a1b7d4e') == 'soulnear/bot'
    assert repository_of('registry.example.com:5000/soulnear/bot:1.4.2') == 'registry.example.com:5000/soulnear/bot'
    assert repository_of('registry.example.com:5000/soulnear/bot') == 'registry.example.com:5000/soulnear/bot'
    assert repository_of('soulnear/bot@sha256:abcd') == 'soulnear/bot'
    assert safe_name('image-3f9c/../x') == 'image-3f9c_.._x'
