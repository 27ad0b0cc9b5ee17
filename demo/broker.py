"""An embedded MQTT 3.1.1 broker (amqtt) for machines without mosquitto: ``python -m edgecloud.demo.broker``.

Loopback only and anonymous, for the demo. Production fleets run mosquitto
(or a cluster) with TLS and per-device ACLs: see ``deploy/mosquitto/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from amqtt.broker import Broker


async def serve(host: str, port: int) -> None:
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 1000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    logging.getLogger("edgecloud.demo.broker").info("embedded MQTT 3.1.1 broker on %s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgecloud.demo.broker").setLevel(logging.INFO)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
