"""Messages per second per sender, shared by every worker through Redis.

A GCRA (generic cell rate) limiter in one Lua script, timed by the Redis server's clock so
workers on different machines agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

# KEYS[1] = the sender's key; ARGV = emission interval (µs), burst (cells), cells wanted.
# Returns how many microseconds the caller must wait before sending (0: go now).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cells = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cells
local allow_at = new_tat - interval * burst
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"""


class SenderRateLimiter:
    def __init__(
        self,
        connection: redis.Redis,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = 30.0,
    ):
        self._script = connection.register_script(_GCRA)
        self._sleep = sleep
        self.max_wait = max_wait

    def try_acquire(self, sender: str, per_second: float, cells: int = 1) -> float:
        """Take ``cells`` sends now if allowed (returns 0), else the seconds to wait."""
        interval = int(1_000_000 / per_second)
        burst = max(int(per_second), cells, 1)
        wait_us = int(self._script(keys=[f"paylink:rate:{sender}"], args=[interval, burst, cells]))
        return wait_us / 1_000_000

    def acquire(self, sender: str, per_second: float, cells: int = 1) -> float:
        """Block until ``cells`` sends are allowed; returns the seconds waited."""
        waited = 0.0
        while True:
            wait = self.try_acquire(sender, per_second, cells)
            if wait <= 0:
                return waited
            if waited + wait > self.max_wait:
                raise TimeoutError(f"sender {sender} is over its rate for too long")
            self._sleep(wait)
            waited += wait
