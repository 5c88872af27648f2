"""Run every ``benchmarks/*_report.py`` script in turn (``make bench``).

Each script prints its table; extra arguments are passed to every script. The exit
status is non-zero if any script failed.
"""

import subprocess
import sys
from pathlib import Path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    here = Path(__file__).resolve().parent
    scripts = sorted(here.glob("*_report.py"))
    if not scripts:
        print("no benchmarks/*_report.py scripts found", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        status = subprocess.call([sys.executable, str(script), *argv], cwd=here.parent)
        if status != 0:
            failed.append(f"{script.name} (exit {status})")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
