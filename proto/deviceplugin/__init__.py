"""The kubelet device-plugin API (package `deviceplugin`); imported by the worker process."""
