"""What the supervisor watches: the config file, kubelet.sock, kernel/udev uevents."""
