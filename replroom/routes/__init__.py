"""The server's routes, one module per kind (``replroom.app`` assembles them).

- :mod:`~replroom.routes.http`: the rooms API, the pages, health and metrics;
- :mod:`~replroom.routes.room_socket`: the room WebSocket (docs/protocol.md);
- :mod:`~replroom.routes.editor_socket`: the shared editor's WebSocket
  (docs/editor.md);
- :mod:`~replroom.routes.common`: what they share (origin check, closing, pages);
- :mod:`~replroom.routes.guards`: the HTTP failure guard and uvicorn's log filter.
"""
