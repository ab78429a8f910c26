"""A Faust agent that does nothing per message: the floor of Faust's per-message cost.

Run by ingest.py as ``python _faust_noop.py BOOTSTRAP TOPIC N``; prints one JSON line with the
messages per second it consumed once it has seen N messages.
"""

import json
import os
import sys
import time

import faust

bootstrap, topic_name, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = faust.App("pakit-noop-bench", broker=f"kafka://{bootstrap}", store="memory://",
                web_enabled=False, autodiscover=False, topic_partitions=1,
                broker_rebalance_timeout=6.0, broker_session_timeout=6.0,
                broker_heartbeat_interval=2.0, consumer_auto_offset_reset="earliest")
topic = app.topic(topic_name, value_serializer="raw")
state = {"n": 0, "t0": None}


@app.agent(topic)
async def noop(stream):
    async for _ in stream:
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        state["n"] += 1
        if state["n"] == expected:
            dt = time.perf_counter() - state["t0"]
            print(json.dumps({"messages": expected, "seconds": dt,
                              "messages_per_s": (expected - 1) / dt}), flush=True)
            os._exit(0)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()
