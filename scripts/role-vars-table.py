#!/usr/bin/env python3
"""Print a Markdown table of a role's variables from its defaults/main.yml (name, default, comment).

Used to write README's variable reference; tests/unit/test_docs.py checks README names every variable.
Usage: scripts/role-vars-table.py ROLE
"""
import re
import sys

lines = open('roles/%s/defaults/main.yml' % sys.argv[1]).read().splitlines()
print('| variable | default | meaning |')
print('|---|---|---|')
comment = []
for i, line in enumerate(lines):
    if line.startswith('#'):
        comment.append(line.lstrip('# ').strip())
        continue
    match = re.match(r'^([a-z_]+):\s*(.*)$', line)
    if match:
        value = match.group(2)
        if value in ('', '>-', '|'):
            value = ' '.join(nxt.strip() for nxt in lines[i + 1:i + 4] if nxt.startswith('  '))
        value = value.replace('|', '\\|')
        print('| `%s` | `%s` | %s |' % (match.group(1), value[:60], ' '.join(comment[-1:])))
    comment = [] if not line.startswith('#') else comment
