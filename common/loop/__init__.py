"""The loop toolkit both long-running processes use (supervisor and workers).

`timers` (a heap of named deadlines with callbacks), `signals` (signals as a readable fd),
`backoff` (the one capped exponential backoff), `throttle` (the one log throttle), `inotify`
(folder events as a readable fd) and `file_identity` (what "the same file" means). Nothing here
starts a thread or imports grpc or zmq, so it is safe before a fork.
"""
