# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The releases of the safe redeploy (Redeployer's Releases part): one directory per version below releases_dir, the
current link switched only after a successful swap, the deploy history, and pruning the images and releases
beyond the kept versions."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import time

from . import containers
from .deploy_common import HISTORY_FILE, _StepFailed
from .files import write_private


class Releases:
    """Redeployer's releases and history (self.params, self.result, self.warn)."""

    def release_dir(self, version):
        return os.path.join(self.params['releases_dir'], version)

    def history_path(self):
        return os.path.join(self.params['releases_dir'], HISTORY_FILE)

    def history(self):
        try:
            with open(self.history_path()) as handle:
                data = json.load(handle)
            return [e for e in data.get('deployed', []) if isinstance(e, dict) and e.get('version')]
        except (OSError, ValueError, AttributeError):
            return []

    def current_release(self):
        link = self.params['current_link']
        if not os.path.islink(link):
            return None
        return os.path.basename(os.path.normpath(os.readlink(link)))

    def switch(self, version):
        """Point the current link at the release, atomically (a new link renamed over the old one)."""
        link = self.params['current_link']
        target = os.path.relpath(self.release_dir(version), os.path.dirname(os.path.abspath(link)))
        if os.path.islink(link) and os.readlink(link) == target:
            return False
        if os.path.exists(link) and not os.path.islink(link):
            raise _StepFailed('switch', '%s exists and is not a symbolic link; move it away (the releases live in %s)'
                              % (link, self.params['releases_dir']))
        tmp = link + '.new'
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        return True

    def record(self, version, image, image_id):
        entries = [e for e in self.history() if e['version'] != version]
        entries.append(dict(version=version, image=image, image_id=image_id,
                            deployed_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())))
        os.makedirs(self.params['releases_dir'], exist_ok=True)
        write_private(self.history_path(), json.dumps(dict(deployed=entries[-50:]), indent=1) + '\n')
        os.chmod(self.history_path(), 0o644)

    def kept_versions(self, current):
        """The current version and the newest keep_images previous ones: from the history, then (images of an
        earlier layout) the newest other tags of image_name."""
        keep = max(0, int(self.params['keep_images']))
        tags = [tag for tag, _created in self.image_tags()]
        kept = [current]
        for version in [e['version'] for e in reversed(self.history())] + tags:
            if len(kept) > keep:
                break
            if version not in kept and version in tags:
                kept.append(version)
        return kept

    def image_tags(self):
        """Tags of image_name on this host, newest first: [(tag, created)]."""
        proc = containers.run(['images', '--format', '{{.Tag}}\t{{.CreatedAt}}', self.params['image_name']],
                              check=False)
        tags = []
        for line in proc.stdout.decode('utf-8', 'replace').splitlines():
            tag, _unused, created = line.partition('\t')
            if tag and tag != '<none>':
                tags.append((tag, created))
        tags.sort(key=lambda t: t[1], reverse=True)
        return tags

    def prune(self, current):
        kept = self.kept_versions(current)
        self.result['kept_versions'] = kept
        for tag, _unused in self.image_tags():
            if tag in kept:
                continue
            ref = '%s:%s' % (self.params['image_name'], tag)
            proc = containers.run(['rmi', ref], check=False)
            if proc.returncode == 0:
                self.result['pruned_images'].append(ref)
            else:
                self.warn('could not remove the old image %s: %s'
                          % (ref, proc.stderr.decode('utf-8', 'replace').strip()))
        releases = self.params['releases_dir']
        for name in sorted(os.listdir(releases)):
            path = os.path.join(releases, name)
            if name.startswith('.') or name in kept or not os.path.isdir(path) or os.path.islink(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            self.result['pruned_releases'].append(name)
