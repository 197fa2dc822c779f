"""Both parties in one process: a tagged exchange with forks, then the accounting.

Run: python demos/local_channel.py
"""

import asyncio

import numpy as np

from secmoe.net import run_local


async def client(ch):
    await ch.send(np.arange(8, dtype=np.uint64), tag="demo/x")
    halves = await asyncio.gather(*(ch.fork(f"part{i}").recv(tag="demo/y") for i in range(2)))
    return np.concatenate(halves)


async def server(ch):
    x = await ch.recv(tag="demo/x")
    await asyncio.gather(
        *(ch.fork(f"part{i}").send(x[4 * i : 4 * i + 4] * 3, tag="demo/y") for i in range(2))
    )
    return ch.stats.summary()


def main() -> None:
    y, summary = asyncio.run(run_local(client, server, timeout=10))
    print("client received", y)
    print("rounds on the critical path:", summary["rounds"])
    for path, row in summary["by_path"].items():
        print(f"  {path or '(root)':8} c2s={row['bytes_c2s']:4} B  s2c={row['bytes_s2c']:4} B")


if __name__ == "__main__":
    main()
