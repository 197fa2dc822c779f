"""Private inference of the bundled digits MoE model, both parties in one process.

The client holds 4 held-out images; the server holds the model. The client learns the
predictions; the server learns nothing about the images or which expert each patch used.

Run: python demos/private_inference.py [select|all|dispatch]
"""

import asyncio
import sys

from secmoe.model.reference import run
from secmoe.model.secure import RunOptions
from secmoe.model.session import client_session, serve_session
from secmoe.model.weights import load_bundled, load_heldout
from secmoe.net import memory_pair, run_pair


async def main(strategy: str) -> None:
    weights = load_bundled()  # the server's
    images, labels = load_heldout()  # the client's
    x = images[:4]
    client_ch, server_ch = memory_pair()
    result, _ = await run_pair(
        client_session(client_ch, x, options=RunOptions(strategy)),
        serve_session(server_ch, weights),
        timeout=600,
    )
    plain = run(weights, x).output.argmax(-1)
    print(
        f"strategy {strategy}: secure {result.output.argmax(-1)}, plaintext {plain}, "
        f"labels {labels[:4]}"
    )
    total = result.stats.total("online")
    print(f"{result.seconds:.1f} s, {total.bytes_total / 1e6:.1f} MB, {result.stats.depth} rounds")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "select"))
