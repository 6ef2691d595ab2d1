"""The zygote: a fork server that holds the worker's imports once (zygote and worker processes).

The supervisor starts one zygote (`python -m zygote`); it imports grpc, protobuf, pyzmq and the
worker's modules, freezes them for the collector, and forks a worker on each request, so every
worker shares those pages copy-on-write instead of importing its own. `zygote.safety` holds what
"safe to fork" means; `zygote.server` the loop. This package never runs in the supervisor.
"""
