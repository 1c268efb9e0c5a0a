"""`lcmvideo live --serve`: the browser page (lcmvideo/data/web/), its WebSocket protocol
(protocol.py: the messages and the checks on what comes in) and the server around the live
loop (server.py: starlette on uvicorn)."""
