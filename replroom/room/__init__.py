"""Rooms, cut along tmux's lines (docs/architecture.md).

- :mod:`~replroom.room.terminal`: the shared terminal (panes, replay,
  outboxes, flow control, the output rate, flood skipping);
- :mod:`~replroom.room.members`: members, their roles and colours, tmux's
  size rule;
- :mod:`~replroom.room.supervisor`: the sandbox and the REPLs, their states,
  restarts, health checks and backoff;
- :mod:`~replroom.room.room`: a :class:`Room` composing the three;
- :mod:`~replroom.room.manager`: the :class:`RoomManager` of all rooms (who
  may join, capacity, shutdown).
"""

from replroom.room.manager import Admission, Refused, RoomManager
from replroom.room.members import Member
from replroom.room.room import ReplBusy, Room
from replroom.room.supervisor import AtCapacity, IllegalTransition

__all__ = [
    "Admission",
    "AtCapacity",
    "IllegalTransition",
    "Member",
    "Refused",
    "ReplBusy",
    "Room",
    "RoomManager",
]
