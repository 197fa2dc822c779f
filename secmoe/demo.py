"""``secmoe demo``: what is built so far, both parties in one process.

For now: the channel itself (throughput, latency, accounting). The private-inference demo on the
bundled model replaces this once the secure model runner exists.
"""

from __future__ import annotations

import argparse
import json

from .bench import REGISTRY, run_bench


def run_demo(args: argparse.Namespace) -> int:
    """Run the demonstration and print its figures."""
    from .cli import _print_result, run_async

    ns = argparse.Namespace(
        size=1 << 20, count=32, pings=100, party=None, net=None, transcript=None, timeout=120.0
    )
    result = run_async(run_bench(REGISTRY["channel"], ns))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print("secmoe demo: two parties in one process over the in-memory channel")
        _print_result(result, as_json=False)
    return 0
