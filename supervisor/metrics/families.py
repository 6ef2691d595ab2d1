"""What the plugin exports to Prometheus: every metric family's name, type, labels and help, and
the label values that are fixed (supervisor process only).

`FAMILIES` is the single list: `supervisor.metrics.exporter.Metrics` fills these families on a
scrape, and the docs and manifest tests read the names from here.
"""

from __future__ import annotations

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

PREFIX = "rdma_shared_dp_"
#: Label values of `result` on allocations, registrations and config reloads.
SUCCESS = "success"
FAILURE = "failure"
#: Upper bounds (seconds) of the device-scan duration histogram: a sysfs walk takes milliseconds
#: on a small node and can reach a second on a large one with a slow /sys.
SCAN_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
#: `reason` values of worker_restarts_total that the supervisor uses (`worker_table.exit_decision`
#: and the arbiter's kills). Each starts at 0 when its resource appears: a counter series born at 1
#: hides its first increment from increase() and rate().
RESTART_REASONS: tuple[str, ...] = (
    "crashed",
    "killed",
    "hung",
    "start_timeout",
    "config_invalid",
    "exited",
)

#: name -> (type, labels, help). The single list of what the plugin exports.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "build_info": ("gauge", ("version",), "Always 1; the version label is the plugin's version."),
    "resource_devices": (
        "gauge",
        ("resource",),
        "Devices the resource advertises to the kubelet (rdmaHcaMax when it matched any HCA).",
    ),
    "resource_healthy_devices": (
        "gauge",
        ("resource",),
        "Advertised devices that are healthy (all of them when any matched HCA is healthy).",
    ),
    "resource_hcas": ("gauge", ("resource",), "HCAs the resource's selectors match."),
    "resource_usable_hcas": (
        "gauge",
        ("resource",),
        "Matched HCAs whose uverbs, umad and rdma_cm device nodes are present.",
    ),
    "hca_info": (
        "gauge",
        ("resource", "pci_address", "rdma_device", "netdev", "link_type", "numa_node"),
        "Always 1; one series per RDMA device of each HCA a resource matches.",
    ),
    "hca_port_up": (
        "gauge",
        ("rdma_device", "port"),
        "1 when the RDMA port's state is ACTIVE, else 0; every port on the node.",
    ),
    "allocations_total": (
        "counter",
        ("resource", "result"),
        "Allocate calls answered by the resource's worker, by result.",
    ),
    "allocate_duration_seconds": (
        "histogram",
        ("resource",),
        "Time the worker took to answer Allocate.",
    ),
    "registrations_total": (
        "counter",
        ("resource", "result"),
        "Registrations of the resource with the kubelet, by result.",
    ),
    "kubelet_restarts_total": ("counter", (), "Kubelet restarts seen (kubelet.sock replaced)."),
    "worker_up": (
        "gauge",
        ("resource",),
        "1 while the resource's worker is running (started and heard from), else 0.",
    ),
    "worker_restarts_total": (
        "counter",
        ("resource", "reason"),
        "Restarts of the resource's worker process, by reason.",
    ),
    "worker_consecutive_failures": (
        "gauge",
        ("resource",),
        "Quick exits of the resource's worker in a row (0 once a run lasts): above 3 it is "
        "crash-looping; `rdma-shared-dp status` and the log name its last error.",
    ),
    "worker_resident_memory_bytes": (
        "gauge",
        ("resource",),
        "Resident memory of the resource's worker process.",
    ),
    "worker_cpu_seconds_total": (
        "counter",
        ("resource",),
        "CPU time (user + system) used by the resource's worker processes, across restarts.",
    ),
    "config_reloads_total": ("counter", ("result",), "Config file reloads, by result."),
    "config_last_reload_success_timestamp_seconds": (
        "gauge",
        (),
        "Unix time of the last successful config load (at start or reload).",
    ),
    # Beside the reload counter: a counter of refusals cannot say the refused file is still there.
    "config_last_reload_successful": (
        "gauge",
        (),
        "1 when the newest config file was loaded, 0 while it is refused (the previous one runs).",
    ),
    "rdma_netns_exclusive": (
        "gauge",
        (),
        "1 when the RDMA subsystem is in exclusive network-namespace mode (pods cannot share "
        "devices), 0 in shared mode; absent while unknown.",
    ),
    "node_problem": (
        "gauge",
        ("reason",),
        "1 for the reason this node serves no RDMA device at all (no_pci_bus, sysfs_unreadable, "
        "no_devices), else 0; absent before the first device scan. /readyz names the cause.",
    ),
    "retained_device_ids": (
        "gauge",
        ("resource",),
        "Device IDs above rdmaHcaMax still advertised because running pods hold them (after a "
        "shrink); the log names the pods.",
    ),
    "device_scans_total": ("counter", ("trigger",), "Full sysfs device scans, by trigger."),
    "device_scan_duration_seconds": ("histogram", (), "Time a full sysfs device scan took."),
    "device_scan_errors_total": (
        "counter",
        ("reason",),
        "Sysfs entries a device scan had to skip, by reason (counted on every scan).",
    ),
    "resource_cdi_spec_current": (
        "gauge",
        ("resource",),
        "With --use-cdi: 1 when the CDI spec of the resource's current devices is on disk, 0 while "
        "it cannot be written (Allocate refused, every device advertised Unhealthy).",
    ),
    "cdi_write_errors_total": (
        "counter",
        ("resource", "reason"),
        "Failed CDI spec writes of the resource's worker, by reason (read_only, no_space, ...).",
    ),
    "pod_allocations": (
        "gauge",
        ("namespace", "pod", "container", "resource"),
        "Devices of the resource allocated to the container, from the kubelet's PodResources API.",
    ),
    "pod_rdma_usage": (
        "gauge",
        ("resource", "pod_uid", "rdma_device", "object"),
        "Verbs handles or objects the pod holds on the RDMA device (rdma.current of its cgroup).",
    ),
    "pod_rdma_limit": (
        "gauge",
        ("resource", "pod_uid", "rdma_device", "object"),
        "The pod's rdma cgroup limit (rdma.max) for the device; absent when unlimited.",
    ),
}


#: The DRA driver's families (supervisor/metrics/dra.py renders them; only with `run --dra`).
DRA_FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "dra_registered": ("gauge", (), "1 while the kubelet has the DRA driver registered."),
    "dra_slices_published": (
        "gauge",
        (),
        "1 while the node's ResourceSlices say what the DRA driver publishes.",
    ),
    "dra_devices": ("gauge", (), "Devices in the node's DRA pool."),
    "dra_prepared_claims": ("gauge", (), "ResourceClaims prepared on this node."),
    "dra_claims_total": (
        "counter",
        ("call", "result"),
        "Claims in NodePrepareResources (call=prepare) and NodeUnprepareResources (unprepare).",
    ),
    "dra_call_duration_seconds": (
        "histogram",
        ("call",),
        "Seconds one NodePrepareResources or NodeUnprepareResources call took.",
    ),
    "dra_slice_writes_total": (
        "counter",
        ("verb",),
        "ResourceSlice writes (create, update, delete).",
    ),
    "dra_api_errors_total": ("counter", ("call",), "Failed calls to the API server, by call."),
}


def build_families() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for short, (kind, labels, doc) in FAMILIES.items():
        name = PREFIX + short
        if kind == "gauge":
            out[short] = GaugeMetricFamily(name, doc, labels=labels)
        elif kind == "counter":
            out[short] = CounterMetricFamily(name, doc, labels=labels)
        else:
            out[short] = HistogramMetricFamily(name, doc, labels=labels)
    return out


def metric_names() -> list[str]:
    """Every exported metric family name (counters with `_total`), for docs and manifest tests."""
    return [PREFIX + short for short in FAMILIES]


def exported_metrics() -> dict[str, str]:
    """Exported metric name -> Prometheus type ("gauge", "counter" or "histogram"), the DRA
    driver's (`run --dra` only) included."""
    every = {**FAMILIES, **DRA_FAMILIES}
    return {PREFIX + short: kind for short, (kind, _, _) in every.items()}
