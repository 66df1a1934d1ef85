"""Print one command of the README's Quickstart block: ``python .ci/readme_commands.py N``.

The Quickstart section of README.md holds exactly one ```bash block with two commands: (1) run
the main job, (2) install the test extras and run the tests. ``.ci/run`` takes command 2 from
here, so CI runs what the README tells a user to run, letter for letter
(tests/test_readme.py checks both ends). Standard library only: it runs before any install.
"""

from __future__ import annotations

import pathlib
import re
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands(text: str) -> list[str]:
    """The non-blank, non-comment lines of the one ```bash block under ``## Quickstart``."""
    match = re.search(r"^## Quickstart\n(.*?)(?=^## )", text, re.S | re.M)
    if match is None:
        raise SystemExit("README.md has no '## Quickstart' section")
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), re.S | re.M)
    if len(blocks) != 1:
        raise SystemExit(f"README.md's Quickstart must hold one ```bash block, found {len(blocks)}")
    return [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


if __name__ == "__main__":
    commands = quickstart_commands(README.read_text(encoding="utf-8"))
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    if not 1 <= index <= len(commands):
        raise SystemExit(f"the Quickstart has {len(commands)} commands, asked for {index}")
    print(commands[index - 1])
