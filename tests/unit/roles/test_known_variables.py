"""The preflight's list of the project's variables (roles/preflight/vars/main/known_variables.yml) is in step with the
roles, and the "did you mean" filter finds the name a typo meant."""

import os
import subprocess
import sys

from ansiblerun import ROOT
sys.path.insert(0, os.path.join(ROOT, 'plugins', 'filter'))

from soulnear import did_you_mean  # noqa: E402


def test_the_known_variables_are_in_step_with_the_roles():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'known-variables.py'), '--check'],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_did_you_mean():
    known = ['postgres_max_connections', 'postgres_image', 'app_env', 'app_env_file']
    assert did_you_mean('postgres_max_conections', known) == 'postgres_max_connections'
    assert did_you_mean('app_envs', known) == 'app_env'
    assert did_you_mean('app_zzz_whatever', known) == ''
