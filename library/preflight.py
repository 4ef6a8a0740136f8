#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
---
module: preflight
short_description: Check that a host can take a SoulNear deploy before anything on it changes
description:
  - Run first by C(deploy.yml), with privilege escalation, and changes nothing. Reports every problem at once, each
    with the setting or command that fixes it, and fails when there is one.
  - "Disk: each of O(free_space) must have its minimum free (the nearest existing parent is measured, so a
    directory the deploy will create is checked on the file system it will live on)."
  - "Images: each of O(images) must be on the host already, or come as an archive from the controller, or its
    registry must answer over HTTPS (a C(docker pull) would fail later, after the engine and the database were
    already set up)."
  - "Gap it fills: C(ansible.builtin.assert) checks variables on the controller, and C(community.docker)
    modules find out that an image cannot be pulled only when they try, half-way through a deploy. This module
    asks the host the questions a deploy would otherwise answer by failing."
version_added: "1.1.0"
author: SoulNear operations contributors (!UNKNOWN)
options:
  free_space:
    description: Paths and the free space each needs.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: An absolute path on the host (it need not exist yet).
        type: path
        required: true
      min_mb:
        description: Megabytes that must be free there (0 or more).
        type: int
        required: true
      why:
        description: What needs the space, for the message.
        type: str
        default: the deployment
  images:
    description: Images the deploy needs on the host.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Image name with tag, e.g. C(postgres:15) or C(registry.example.com/bot:1.2) (a Docker image
          reference).
        type: str
        required: true
      archive:
        description: Whether the controller ships it as an archive (then no registry is needed).
        type: bool
        default: false
      variables:
        description: The variables that set this image and its archive, for the message.
        type: str
        default: ""
  registry_timeout:
    description: Seconds to wait for a registry to answer (1 to 600).
    type: int
    default: 5
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module only reads; check mode runs the same checks.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
'''

EXAMPLES = r'''
- name: Check that the host can take the deploy
  preflight:
    free_space:
      - {path: /var/lib/docker, min_mb: 2048, why: images and the database}
    images:
      - {name: "postgres:15", archive: false, variables: postgres_image / postgres_image_archive}
'''

RETURN = r'''
problems:
  description: Every problem found, each with its fix.
  returned: always
  type: list
  elements: str
checks:
  description: What was measured (free MB per path, where each image comes from).
  returned: always
  type: dict
msg:
  description: One line for people.
  returned: always
  type: str
  sample: "preflight passed: 3 check(s)"
'''

import shutil
import subprocess
from urllib import error as urlerror

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlsConnectionError, open_url
from ansible.module_utils.soulnear.files import disk_usage
from ansible.module_utils.soulnear import validate


def argument_spec():
    return dict(
        free_space=dict(type='list', elements='dict', default=[], options=dict(
            path=dict(type='path', required=True),
            min_mb=dict(type='int', required=True),
            why=dict(type='str', default='the deployment'),
        )),
        images=dict(type='list', elements='dict', default=[], options=dict(
            name=dict(type='str', required=True),
            archive=dict(type='bool', default=False),
            variables=dict(type='str', default=''),
        )),
        registry_timeout=dict(type='int', default=5),
    )


def check_options(module):
    """Every option checked before a question is asked (validate.py); fails naming each bad one."""
    options = validate.Options(module.params, argument_spec())
    for index, item in enumerate(module.params['free_space']):
        options.value('free_space[%d].path' % index, item['path'], validate.nonempty_path)
        options.value('free_space[%d].min_mb' % index, item['min_mb'], validate.in_range, 0, None, 'MB')
    for index, image in enumerate(module.params['images']):
        options.value('images[%d].name' % index, image['name'], validate.name, 'image')
    options.check('registry_timeout', validate.in_range, 1, 600, 'seconds')
    options.fail(module)


def registry_of(image):
    """The registry host of an image reference (Docker Hub for short names)."""
    first = image.split('/', 1)[0]
    if '/' in image and ('.' in first or ':' in first or first == 'localhost'):
        return first
    return 'registry-1.docker.io'


def registry_answers(host, timeout):
    """True when https://host/v2/ answers at all (401 is the normal answer without credentials)."""
    try:
        open_url('https://%s/v2/' % host, timeout=timeout)
        return True, 'answers'
    except urlerror.HTTPError:
        return True, 'answers'
    except (urlerror.URLError, UrlsConnectionError, OSError, ValueError) as exc:
        return False, str(getattr(exc, 'reason', exc))


def image_present(name):
    docker = shutil.which('docker')
    if not docker:
        return False
    proc = subprocess.run([docker, 'image', 'inspect', name], capture_output=True, timeout=60, check=False)
    return proc.returncode == 0


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    check_options(module)
    problems, checks = [], dict(free_mb={}, images={})
    for item in module.params['free_space']:
        usage = disk_usage(item['path'])
        checks['free_mb'][item['path']] = usage['free_mb']
        if usage['free_mb'] < item['min_mb']:
            problems.append('only %d MB free for %s on %s (%s), %d MB needed: free space (apt-get clean, docker '
                            'system prune) or grow the disk' % (usage['free_mb'], item['why'], usage['measured'],
                                                                item['path'], item['min_mb']))
    answers = {}
    for image in module.params['images']:
        name = image['name']
        if image_present(name):
            checks['images'][name] = 'on the host'
            continue
        if image['archive']:
            checks['images'][name] = 'archive from the controller'
            continue
        registry = registry_of(name)
        if registry not in answers:
            answers[registry] = registry_answers(registry, module.params['registry_timeout'])
        ok, why = answers[registry]
        checks['images'][name] = 'pull from %s' % registry if ok else 'unavailable'
        if not ok:
            problems.append('image %s is not on the host, no archive is given and its registry %s does not answer '
                            '(%s): build the images on the controller (scripts/images.sh) and set %s to them, or '
                            'make the registry reachable' % (name, registry, why, image['variables'] or 'the archive'))
    count = len(module.params['free_space']) + len(module.params['images'])
    if problems:
        module.fail_json(msg='The host cannot take this deploy yet (nothing was changed): ' + ' | '.join(problems),
                         problems=problems, checks=checks)
    module.exit_json(changed=False, problems=[], checks=checks, msg='preflight passed: %d check(s)' % count)


if __name__ == '__main__':
    main()
