"""Read a transcript written by `secmoe demo` (or `--transcript` on any command).

Prints where the bytes went (by path), the busiest messages, and the LAN/WAN estimates.
Run: secmoe demo --samples 2 && python demos/read_transcript.py secmoe-demo.transcript.jsonl
"""

import sys
from collections import Counter

from secmoe.net.transcript import read_transcript, summarize


def main(path: str) -> None:
    events = read_transcript(path)
    summary = summarize(events, depth=2)
    print(f"{summary['total']['messages']} messages, {summary['total']['rounds']} rounds")
    for name, row in sorted(
        summary["by_path"].items(), key=lambda kv: -(kv[1]["bytes_c2s"] + kv[1]["bytes_s2c"])
    )[:10]:
        mb = (row["bytes_c2s"] + row["bytes_s2c"]) / 1e6
        print(f"  {name:32} {mb:9.3f} MB  {row['messages']:6} messages")
    tags = Counter()
    for ev in events:
        tags[ev["tag"]] += ev["bytes"]
    print(
        "largest message kinds:", ", ".join(f"{t} {b / 1e6:.2f} MB" for t, b in tags.most_common(5))
    )
    for name, est in summary["estimates"].items():
        print(f"estimated on {name}: {est['seconds']:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "secmoe-demo.transcript.jsonl")
