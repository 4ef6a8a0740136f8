# -*- coding: utf-8 -*-
# Copyright: SoulNear operations contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SoulNear Python layer, one job per file.

Imported as ``ansible.module_utils.soulnear.<name>`` by the modules in library/ (Ansible ships the
package inside each module) and as ``soulnear.<name>`` by the host commands, which find a copy of this
directory on their sys.path (the soulnear role installs it). Files import each other relatively, so
both names work without a fallback import. Nothing here imports Ansible.
"""
