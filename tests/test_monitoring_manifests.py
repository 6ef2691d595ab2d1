"""Tests of the monitoring manifests: Service, ServiceMonitor, PrometheusRule, Grafana dashboard
(run in the test process only).

The alerting rules pass `promtool check rules`, and `promtool test rules` proves each alert fires
on the situation it names and stays quiet otherwise. Every metric the rules and the dashboard
query is one the plugin exports (the PromQL is tokenised here, not guessed with a regex), and the
dashboard has a panel for every exported metric.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from supervisor import cli
from supervisor.metrics import exported_metrics
from tests.test_deployment import K8S, daemonset_container, only, render, tool, yaml

MONITORING = K8S / "overlays" / "monitoring"

# What the plugin exports, straight from the exporter: a renamed or dropped metric fails here
# instead of silently breaking an alert or a panel.
EXPORTED_METRICS: dict[str, str] = exported_metrics()
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
JOB = "rdma-shared-dp"

Doc = dict[str, Any]


def series_of(metric: str, kind: str) -> set[str]:
    if kind == "histogram":
        return {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    return {metric}


ALLOWED_SERIES = PROMETHEUS_SERIES.union(*(series_of(m, k) for m, k in EXPORTED_METRICS.items()))


def exported_metric(series: str) -> str:
    """The exported metric a series name belongs to (histograms have three series)."""
    for metric, kind in EXPORTED_METRICS.items():
        if series in series_of(metric, kind):
            return metric
    raise KeyError(series)


# --- a small PromQL tokeniser: which identifiers are metric names ---------------------------------

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{?\w+\}?)
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(){}\[\],])
  | (?P<other>\S)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
# Aggregations may put their `by`/`without` clause before the parenthesis: `sum by (x) (...)`.
_AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
# Modifiers followed by a parenthesised list of label names.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside label matchers, ranges, label
    lists and strings that are neither functions, aggregations nor keywords."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    brace = bracket = 0
    label_list_depth: int | None = None
    paren = 0
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct":
            if text == "{":
                brace += 1
            elif text == "}":
                brace -= 1
            elif text == "[":
                bracket += 1
            elif text == "]":
                bracket -= 1
            elif text == "(":
                paren += 1
            elif text == ")":
                paren -= 1
                if label_list_depth is not None and paren < label_list_depth:
                    label_list_depth = None
            continue
        if kind != "ident" or brace or bracket or label_list_depth is not None:
            continue
        if text in _LABEL_LISTS:
            if nxt == "(":
                label_list_depth = paren + 1
            continue
        if text in _KEYWORDS or text in _AGGREGATIONS or nxt == "(":
            continue
        names.add(text)
    return names


def test_tokeniser_finds_metrics_and_only_metrics() -> None:
    expr = (
        'sum by (resource, le) (rate(foo_bucket{job="x", le=~"0.5|1"}[$__rate_interval]))'
        " / on (instance) group_left(node) bar_total offset 5m"
        ' > bool 2 and absent(up{job="a b"}) unless count without (pod) (baz) == 0'
    )
    assert metric_names(expr) == {"foo_bucket", "bar_total", "up", "baz"}


def test_metric_check_can_fail() -> None:
    misspelt = "rate(rdma_shared_dp_allocation_total[5m])"
    assert not metric_names(misspelt) <= ALLOWED_SERIES


# --- rendered objects -----------------------------------------------------------------------------


def docs() -> list[Doc]:
    return render(MONITORING)


def rule_groups() -> list[Doc]:
    groups: list[Doc] = only(docs(), "PrometheusRule")["spec"]["groups"]
    return groups


def rules() -> list[Doc]:
    return [r for g in rule_groups() for r in g["rules"]]


def dashboard() -> Doc:
    configmap = next(
        d
        for d in docs()
        if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard")
    )
    ((_, text),) = configmap["data"].items()
    parsed: Doc = json.loads(text)
    return parsed


def panels(dash: Doc) -> list[Doc]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(dash: Doc) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p.get("targets", [])]


def template_exprs(dash: Doc) -> list[str]:
    """The metric part of each query variable (`label_values(<expr>, <label>)`)."""
    out = []
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
        assert match, f"unexpected variable query {query!r}"
        out.append(match[1])
    return out


def test_monitoring_objects_are_all_there() -> None:
    kinds = sorted(d["kind"] for d in docs())
    for kind in ("Service", "ServiceMonitor", "PrometheusRule", "DaemonSet"):
        assert kind in kinds
    assert kinds.count("ConfigMap") == 2  # rdma-devices and the dashboard


def test_service_selects_the_plugin_pods_on_the_metrics_port() -> None:
    all_docs = docs()
    service = only(all_docs, "Service")
    _, container = daemonset_container(all_docs)
    pod_labels = only(all_docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == cli.DEFAULT_METRICS_PORT
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports[port["targetPort"]] == cli.DEFAULT_METRICS_PORT


def test_servicemonitor_required_fields_and_wiring() -> None:
    all_docs = docs()
    service = only(all_docs, "Service")
    monitor = only(all_docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["endpoints"], "a ServiceMonitor without endpoints scrapes nothing"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    # The job label the alerts select on comes from the Service label named by jobLabel.
    assert service["metadata"]["labels"][spec["jobLabel"]] == JOB


def test_prometheusrule_required_fields() -> None:
    rule_obj = only(docs(), "PrometheusRule")
    assert rule_obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule_groups()
    for group in rule_groups():
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule)
            assert rule["expr"]
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_cover_what_issue_5_asks_for() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    for wanted in (
        "RdmaSharedDpResourceUnhealthy",
        "RdmaSharedDpResourceLostDevices",
        "RdmaSharedDpWorkerCrashLooping",
        "RdmaSharedDpRegistrationsFailing",
        "RdmaSharedDpConfigReloadFailing",
        "RdmaSharedDpDown",
    ):
        assert wanted in alerts


def test_rules_use_only_exported_metrics() -> None:
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, f"no metric found in {rule['expr']!r}"
        assert used <= ALLOWED_SERIES, f"{rule.get('alert')}: unknown {used - ALLOWED_SERIES}"
        for job in re.findall(r'job="([^"]*)"', rule["expr"]):
            assert job == JOB


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = dashboard()
    for expr in dashboard_exprs(dash) + template_exprs(dash):
        used = metric_names(expr)
        assert used, f"no metric found in {expr!r}"
        assert used <= ALLOWED_SERIES, f"unknown {used - ALLOWED_SERIES} in {expr!r}"


def test_dashboard_has_a_panel_for_every_exported_metric() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs(dashboard())))
    shown = {exported_metric(s) for s in used - PROMETHEUS_SERIES}
    assert shown == set(EXPORTED_METRICS), f"no panel for {set(EXPORTED_METRICS) - shown}"


def test_dashboard_is_a_grafana_sidecar_dashboard() -> None:
    configmap = next(d for d in docs() if d["metadata"]["name"] == "rdma-shared-dp-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dash):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]


# --- promtool -------------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def test_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    proc = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_check_can_fail(tmp_path: Path) -> None:
    bad = copy.deepcopy(rule_groups())
    bad[0]["rules"][0]["expr"] = "sum by (resource (rdma_shared_dp_worker_up)"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": bad}))
    assert promtool("check", "rules", "rules.yaml", cwd=tmp_path).returncode != 0


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Grafana's variables substituted the way Grafana would, then each query as a recording rule.
    substitutions = {"$__rate_interval": "5m", "$node": ".*", "$resource": ".*"}
    queries = dashboard_exprs(dashboard()) + template_exprs(dashboard())
    recorded = []
    for i, expr in enumerate(queries):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unsubstituted variable in {expr!r}"
        recorded.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]})
    )
    proc = promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Each scenario: input series, when to look, and the alerts expected then (labels beyond alertname).
# `quiet` scenarios prove the same alert stays silent on a healthy node.
N1 = {"instance": "10.0.0.1:9478", "node": "n1", "job": JOB}
SCENARIOS: list[tuple[str, str, list[tuple[str, str]], str, list[dict[str, str]]]] = [
    (
        "plugin down",
        "RdmaSharedDpDown",
        [("up", "0x15")],
        "10m",
        [{"severity": "critical"}],
    ),
    ("plugin up", "RdmaSharedDpDown", [("up", "1x15")], "10m", []),
    ("no target at all", "RdmaSharedDpAbsent", [], "20m", [{"severity": "warning", "job": JOB}]),
    (
        "unhealthy devices",
        "RdmaSharedDpResourceUnhealthy",
        [
            ('rdma_shared_dp_resource_devices{resource="rdma/a"}', "1000x15"),
            ('rdma_shared_dp_resource_healthy_devices{resource="rdma/a"}', "0x15"),
        ],
        "10m",
        [{"severity": "critical", "resource": "rdma/a"}],
    ),
    (
        "healthy devices",
        "RdmaSharedDpResourceUnhealthy",
        [
            ('rdma_shared_dp_resource_devices{resource="rdma/a"}', "1000x15"),
            ('rdma_shared_dp_resource_healthy_devices{resource="rdma/a"}', "1000x15"),
        ],
        "10m",
        [],
    ),
    (
        "an unusable HCA",
        "RdmaSharedDpResourceDegraded",
        [
            ('rdma_shared_dp_resource_hcas{resource="rdma/a"}', "2x20"),
            ('rdma_shared_dp_resource_usable_hcas{resource="rdma/a"}', "1x20"),
        ],
        "15m",
        [{"severity": "warning", "resource": "rdma/a"}],
    ),
    (
        "devices lost",
        "RdmaSharedDpResourceLostDevices",
        [('rdma_shared_dp_resource_devices{resource="rdma/a"}', "1000x30 0x15")],
        "40m",
        [{"severity": "critical", "resource": "rdma/a"}],
    ),
    (
        "never had devices (a node without HCAs)",
        "RdmaSharedDpResourceLostDevices",
        [('rdma_shared_dp_resource_devices{resource="rdma/a"}', "0x45")],
        "40m",
        [],
    ),
    (
        "selectors match nothing anywhere",
        "RdmaSharedDpResourceMatchesNothing",
        [('rdma_shared_dp_resource_hcas{resource="rdma/a"}', "0x45")],
        "40m",
        [{"severity": "warning", "resource": "rdma/a"}],
    ),
    (
        "worker down",
        "RdmaSharedDpWorkerDown",
        [('rdma_shared_dp_worker_up{resource="rdma/a"}', "0x10")],
        "8m",
        [{"severity": "critical", "resource": "rdma/a"}],
    ),
    (
        "worker crash-looping",
        "RdmaSharedDpWorkerCrashLooping",
        [('rdma_shared_dp_worker_restarts_total{resource="rdma/a",reason="crash"}', "0+1x20")],
        "10m",
        [{"severity": "warning", "resource": "rdma/a"}],
    ),
    (
        "one worker restart",
        "RdmaSharedDpWorkerCrashLooping",
        [('rdma_shared_dp_worker_restarts_total{resource="rdma/a",reason="crash"}', "0 1x20")],
        "10m",
        [],
    ),
    (
        "registrations failing",
        "RdmaSharedDpRegistrationsFailing",
        [
            ('rdma_shared_dp_registrations_total{resource="rdma/a",result="error"}', "0+1x30"),
            ('rdma_shared_dp_registrations_total{resource="rdma/a",result="success"}', "1x30"),
        ],
        "20m",
        [{"severity": "critical", "resource": "rdma/a"}],
    ),
    (
        "a failure, then success again",
        "RdmaSharedDpRegistrationsFailing",
        [
            ('rdma_shared_dp_registrations_total{resource="rdma/a",result="error"}', "0 1x30"),
            ('rdma_shared_dp_registrations_total{resource="rdma/a",result="success"}', "0 0 1x30"),
        ],
        "8m",
        [],
    ),
    (
        "config refused",
        "RdmaSharedDpConfigReloadFailing",
        [
            ('rdma_shared_dp_config_reloads_total{result="error"}', "0 0 1x20"),
            ('rdma_shared_dp_config_reloads_total{result="success"}', "1x20"),
        ],
        "8m",
        [{"severity": "warning"}],
    ),
]


def with_target(series: str) -> str:
    """Add the labels Prometheus and the ServiceMonitor attach to every scraped series."""
    name, _, labels = series.partition("{")
    target = ",".join(f'{k}="{v}"' for k, v in N1.items())
    inner = labels.rstrip("}")
    return f"{name}{{{target}{',' + inner if inner else ''}}}"


@pytest.mark.parametrize(
    "title,alert,series,eval_time,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_alert_fires_exactly_when_it_should(
    tmp_path: Path,
    title: str,
    alert: str,
    series: list[tuple[str, str]],
    eval_time: str,
    expected: list[dict[str, str]],
) -> None:
    # Annotations are templated text (promtool check rules validates them); leave them out so
    # the comparison is about when and with which labels an alert fires.
    groups = copy.deepcopy(rule_groups())
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))

    target_labels = {k: v for k, v in N1.items()}
    exp_alerts = []
    for labels in expected:
        full = dict(labels)
        # Alerts that aggregate keep only the labels they group by; the rest keep the target's.
        keep = {
            "RdmaSharedDpAbsent": set(),
            "RdmaSharedDpResourceMatchesNothing": set(),
            "RdmaSharedDpWorkerCrashLooping": {"instance", "node"},
            "RdmaSharedDpRegistrationsFailing": {"instance", "node"},
            "RdmaSharedDpConfigReloadFailing": {"instance", "node"},
        }.get(alert, set(target_labels))
        full.update({k: v for k, v in target_labels.items() if k in keep})
        if alert == "RdmaSharedDpWorkerCrashLooping":
            full.pop("reason", None)
        exp_alerts.append({"exp_labels": full})

    unit = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": with_target(s), "values": v} for s, v in series],
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": alert, "exp_alerts": exp_alerts}
                ],
            }
        ],
    }
    (tmp_path / "unit.yaml").write_text(yaml.safe_dump(unit))
    proc = promtool("test", "rules", "unit.yaml", cwd=tmp_path)
    assert proc.returncode == 0, f"{title}:\n{proc.stdout}{proc.stderr}"
