"""Code shared by the supervisor and the workers: config, discovery, selectors, messages.

Runs in both processes, so it imports only the standard library, psutil and pyzmq.
"""
