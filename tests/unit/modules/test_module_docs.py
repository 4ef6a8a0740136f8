"""Every module's documentation says what its argument spec does: the job ansible-test's validate-modules does
for a collection, for the modules in library/.

DOCUMENTATION (with the doc fragments it extends, merged option by option as Ansible merges them) and the
module's argument_spec() must agree on the option names, types, list elements, defaults, choices, aliases and
required; an option that looks like a secret must set no_log. RETURN and EXAMPLES must parse, and the
examples must use the module.
"""

import glob
import importlib.util
import os
import re

import pytest
import yaml

from ansiblerun import ROOT
LIBRARY = os.path.join(ROOT, 'library')
FRAGMENTS = os.path.join(ROOT, 'plugins', 'doc_fragments')
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(LIBRARY, '*.py')))

# Modules someone else is rewriting right now, and so may lack argument_spec() for a while.

# ansible-test validate-modules' rule: an option whose name looks like a secret must set no_log (True or False).
SECRET_NAME = re.compile(r'(?:pass(?!ive)|secret|token|key)', re.I)


def source(name):
    with open(os.path.join(LIBRARY, name + '.py')) as handle:
        return handle.read()



def load(name):
    """Import library/<name>.py without running it (main() only runs as __main__)."""
    spec = importlib.util.spec_from_file_location('soulnear_library_' + name, os.path.join(LIBRARY, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fragment_options(name):
    """Options of a doc fragment in plugins/doc_fragments/ (name, or name.variable as Ansible spells it)."""
    base, _, variable = name.partition('.')
    path = os.path.join(FRAGMENTS, base + '.py')
    assert os.path.exists(path), 'doc fragment %s: no %s' % (name, os.path.relpath(path, ROOT))
    spec = importlib.util.spec_from_file_location('soulnear_fragment_' + base, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = getattr(module.ModuleDocFragment, (variable or 'documentation').upper())
    return yaml.safe_load(text).get('options') or {}


def documented_options(name):
    """DOCUMENTATION's options with its fragments merged in as Ansible merges them: for an option both define,
    the module's keys override the fragment's, key by key."""
    doc = yaml.safe_load(load(name).DOCUMENTATION)
    options = dict(doc.get('options') or {})
    for fragment in doc.get('extends_documentation_fragment') or []:
        for option, fragment_doc in fragment_options(fragment).items():
            options[option] = dict(fragment_doc, **options.get(option, {}))
    return options


def spec_cases():
    for name in MODULES:
        yield pytest.param(name, id=name)


def differences(documented, spec):
    """What differs between one option's documentation and its argument spec, in validate-modules' terms."""
    found = []
    doc_type, spec_type = documented.get('type', 'str'), spec.get('type', 'str')
    if doc_type != spec_type:
        found.append('type: documented %r, argument spec %r' % (doc_type, spec_type))
    if documented.get('elements') != spec.get('elements'):
        found.append('elements: documented %r, argument spec %r' % (documented.get('elements'), spec.get('elements')))
    if documented.get('default') != spec.get('default'):
        found.append('default: documented %r, argument spec %r' % (documented.get('default'), spec.get('default')))
    if documented.get('choices') != spec.get('choices'):
        found.append('choices: documented %r, argument spec %r' % (documented.get('choices'), spec.get('choices')))
    if spec.get('choices') and spec.get('default') is not None and spec['default'] not in spec['choices']:
        found.append('default %r is not one of the choices' % spec['default'])
    if sorted(documented.get('aliases') or []) != sorted(spec.get('aliases') or []):
        found.append('aliases: documented %r, argument spec %r' % (documented.get('aliases'), spec.get('aliases')))
    if bool(documented.get('required')) != bool(spec.get('required')):
        found.append('required: documented %r, argument spec %r' % (documented.get('required', False),
                                                                    spec.get('required', False)))
    if spec.get('required') and 'default' in spec:
        found.append('required and a default at once')
    return found


@pytest.mark.parametrize('name', list(spec_cases()))
def test_documentation_matches_the_argument_spec(name):
    spec = load(name).argument_spec()
    documented = documented_options(name)
    assert sorted(documented) == sorted(spec), 'documented options and argument spec differ: only documented %s, ' \
        'only in the spec %s' % (sorted(set(documented) - set(spec)), sorted(set(spec) - set(documented)))
    problems = ['%s: %s' % (option, difference) for option in sorted(spec)
                for difference in differences(documented[option], spec[option])]
    problems += ['%s looks like a secret but does not set no_log' % option for option in sorted(spec)
                 if SECRET_NAME.search(option) and 'no_log' not in spec[option]]
    assert problems == []


@pytest.mark.parametrize('name', MODULES)
def test_return_and_examples_parse(name):
    module = load(name)
    returned = yaml.safe_load(module.RETURN)
    assert isinstance(returned, dict) and returned
    for key, value in returned.items():
        missing = [field for field in ('description', 'returned', 'type') if field not in value]
        assert missing == [], 'RETURN %s lacks %s' % (key, ', '.join(missing))
    examples = yaml.safe_load(module.EXAMPLES)
    assert isinstance(examples, list) and examples
    assert all(isinstance(task, dict) and 'name' in task for task in examples)
    assert any(name in task for task in examples), 'no example uses %s' % name
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc['module'] == name
