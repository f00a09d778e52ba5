"""``import torchmos`` and ``import torchmos.adapters`` never import the optional toolkits.

Each check runs in a fresh interpreter. "Absent" toolkits are simulated: imports of them
fail as if they were not installed and ``importlib.metadata`` does not find them (so
torchmetrics, which probes ``transformers`` by its metadata, sees it absent too), and every
attempt to import one is recorded with the module that tried.
"""

from __future__ import annotations

import json
import subprocess
import sys

TOOLKITS = ["speechbrain", "espnet", "espnet2", "lightning", "pytorch_lightning", "kaldiio", "transformers"]

ABSENT = r'''
import importlib.abc, importlib.metadata as md, os, sys, traceback
BLOCKED = set(sys.argv[1].split(","))
ATTEMPTS = []

def _blocked(name):
    return name.split(".")[0].replace("-", "_").lower() in BLOCKED

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if not _blocked(name):
            return None
        stack = [f.filename for f in reversed(traceback.extract_stack()[:-1])]
        caller = next((f for f in stack if not f.startswith("<frozen importlib._bootstrap")), "")
        # importlib.util.find_spec() only asks whether it is installed; anything else imports it
        probe = caller == "<frozen importlib.util>" or caller.endswith(os.path.join("importlib", "util.py"))
        kind = "probe" if probe else "import"
        importer = next((f for f in stack if not f.startswith("<") and os.sep + "importlib" + os.sep not in f), "?")
        ATTEMPTS.append([kind, name, importer])
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, _Absent())
for _fn in ("version", "distribution", "metadata", "files", "requires"):
    def _wrapped(name, _orig=getattr(md, _fn)):
        if _blocked(name):
            raise md.PackageNotFoundError(name)
        return _orig(name)
    setattr(md, _fn, _wrapped)
'''


def run(code: str, blocked: list[str] | None = None) -> dict:
    prog = (ABSENT if blocked else "import sys\n") + code
    proc = subprocess.run([sys.executable, "-c", prog, ",".join(blocked or [])], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_torchmos_imports_no_toolkit():
    out = run(
        "import torchmos, torchmos.adapters\n"
        "import json\n"
        f"print(json.dumps({{m: m in sys.modules for m in {TOOLKITS + ['transformers.pipelines', 'torchmos.adapters.hf']}}}))\n"
    )
    loaded = [m for m, v in out.items() if v and m != "transformers"]  # torchmetrics may import transformers
    assert loaded == [], f"import torchmos imported {loaded}"


def test_torchmos_works_without_any_toolkit_and_adapters_name_the_extra():
    code = r'''
import json
import torchmos, torchmos.adapters
from torchmos import DistillMOS, functional
from torchmos.adapters import versa  # needs no toolkit
ours = os.path.dirname(torchmos.__file__)
before = [a for a in ATTEMPTS if a[0] == "import" and a[2].startswith(ours)]
errors = {}
for name in ("speechbrain", "espnet", "hf"):
    try:
        __import__(f"torchmos.adapters.{name}")
        errors[name] = None
    except ImportError as e:
        errors[name] = str(e)
after = [a for a in ATTEMPTS if a[0] == "import" and a[2].startswith(ours)]
print(json.dumps({"before": before, "after": after, "errors": errors}))
'''
    out = run(code, blocked=TOOLKITS)
    assert out["before"] == [], f"torchmos' own modules imported a toolkit: {out['before']}"
    for name, err in out["errors"].items():
        how = "pip install 'transformers" if name == "hf" else f"pip install -e '.[{name}]'"
        assert err is not None and how in err, (name, err)
    importers = {a[2].rsplit("adapters", 1)[-1] for a in out["after"]}
    assert importers <= {"/speechbrain.py", "/espnet.py", "/hf.py"}, importers
