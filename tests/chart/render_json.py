"""Prints the chart's render as a JSON list of objects, for the Rust tests
that apply it to a real API server (tests/kubernetes_cluster.rs).

    python tests/chart/render_json.py VALUE_SET RELEASE NAMESPACE

VALUE_SET names a file in tests/chart/values (without .yaml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rendering import load_values, render  # noqa: E402


def main() -> None:
    value_set, release, namespace = sys.argv[1:4]
    rendered = render(load_values(value_set), release=release, namespace=namespace)
    json.dump(rendered.objects, sys.stdout)


if __name__ == "__main__":
    main()
