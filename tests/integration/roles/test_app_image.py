"""The app role's image build (roles/app/tasks/image.yml) on the local Docker engine: app_build_args reach the
bot's Dockerfile as build arguments next to the BASE_IMAGE the role sets, and a second run finds the version's image
and builds nothing (issue 20: every container option users need has a test)."""

import json
import os
import subprocess
import sys
import uuid

import yaml

from ansiblerun import ROOT
BASE = 'soulnear/python:3-bookworm'

DOCKERFILE = '''ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG GREETING=unset
ARG PIP_INDEX_URL=unset
RUN printf '%s %s\\n' "$GREETING" "$PIP_INDEX_URL" > /build-args
'''


def play(tmp_path, image, version, build_args):
    book = tmp_path / 'build.yml'
    book.write_text(yaml.safe_dump([{
        'name': 'Build the bot image as the app role does', 'hosts': 'localhost', 'gather_facts': False,
        'vars': {'app_source': 'dir', 'app_image_name': image, '__app_version': version,
                 '__app_image': '%s:%s' % (image, version), 'soulnear_app_releases_dir': str(tmp_path / 'releases'),
                 'app_base_image': BASE, 'app_base_image_archive': '', 'app_build_args': build_args,
                 'app_ca_file': '', 'app_ca_bundle_paths': 'auto'},
        'tasks': [{'name': 'The app role image tasks',
                   'ansible.builtin.include_tasks': os.path.join(ROOT, 'roles', 'app', 'tasks', 'image.yml')}]}]))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_NOCOLOR='1',
               ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', 'localhost,',
                           '-c', 'local', str(book)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout[proc.stdout.index('{'):])['stats']['localhost']


def test_build_args_reach_the_dockerfile_and_a_second_run_builds_nothing(tmp_path):
    image, version = 'snbuildargs-%s/bot' % uuid.uuid4().hex[:8], 'v1'
    release = tmp_path / 'releases' / version
    release.mkdir(parents=True)
    (release / 'Dockerfile').write_text(DOCKERFILE)
    args = {'GREETING': 'hello from app_build_args', 'PIP_INDEX_URL': 'https://pypi.example.invalid/simple'}
    try:
        first = play(tmp_path, image, version, args)
        assert first['changed'] == 1 and first['failures'] == 0, first
        out = subprocess.run(['docker', 'run', '--rm', '--network', 'none', '%s:%s' % (image, version),
                              'cat', '/build-args'], capture_output=True, text=True, timeout=120, check=True).stdout
        assert out == 'hello from app_build_args https://pypi.example.invalid/simple\n', out
        again = play(tmp_path, image, version, args)
        assert again['changed'] == 0 and again['failures'] == 0, again
    finally:
        subprocess.run(['docker', 'image', 'rm', '-f', '%s:%s' % (image, version)], capture_output=True, timeout=120)
