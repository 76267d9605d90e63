"""Remote policy server and client (websocket + msgpack numpy, no pickle)."""
