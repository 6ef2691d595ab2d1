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

from cli import parser as cli
from supervisor.metrics.families import exported_metrics
from tests.static.test_deployment import K8S, daemonset_container, only, render, tool, yaml

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


class _Depths:
    """How deep the tokeniser is in braces (label matchers), brackets (ranges), parentheses, and
    whether it is inside a `by (...)`-style label list (the paren depth where that list ends)."""

    def __init__(self) -> None:
        self.brace = self.bracket = self.paren = 0
        self.label_list: int | None = None

    def punct(self, text: str) -> None:
        if text in ("{", "}"):
            self.brace += 1 if text == "{" else -1
        elif text in ("[", "]"):
            self.bracket += 1 if text == "[" else -1
        elif text in ("(", ")"):
            self.paren += 1 if text == "(" else -1
            if self.label_list is not None and self.paren < self.label_list:
                self.label_list = None

    def outside_names(self) -> bool:
        """Inside a label matcher, a range or a label list: no identifier there is a metric."""
        return bool(self.brace or self.bracket or self.label_list is not None)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside label matchers, ranges, label
    lists and strings that are neither functions, aggregations nor keywords."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    depths = _Depths()
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct":
            depths.punct(text)
            continue
        if kind != "ident" or depths.outside_names():
            continue
        if text in _LABEL_LISTS:
            if nxt == "(":
                depths.label_list = depths.paren + 1
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


RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        out.add(text.replace(" ", "-"))
    return out


def test_every_alert_has_a_runbook_url_to_a_section_of_runbooks_md() -> None:
    anchors = _anchors(RUNBOOKS.read_text())
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 11
    for rule in alerts:
        url = rule["annotations"].get("runbook_url", "")
        page, _, fragment = url.partition("#")
        assert page.endswith("/docs/runbooks.md"), (rule["alert"], url)
        assert fragment == rule["alert"].lower() and fragment in anchors, (rule["alert"], url)


def test_runbook_check_can_fail() -> None:
    assert "rdmashareddpdown" not in _anchors("# Something else\n## RdmaSharedDpDownx\n")


ALERTS_TABLE_HEADER = "| alert | fires when | severity |"


def documented_alerts(text: str) -> dict[str, str]:
    """alert -> severity, from the operator docs' alerts table (wherever it lives)."""
    start = text.index(ALERTS_TABLE_HEADER)
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.strip().startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return {row[0].strip("`"): row[-1] for row in rows}


def alerts_table_text() -> str:
    folder = Path(__file__).resolve().parents[2]
    found = [
        p.read_text()
        for p in sorted([folder / "README.md", *(folder / "docs").glob("*.md")])
        if ALERTS_TABLE_HEADER in p.read_text()
    ]
    assert len(found) == 1, f"expected one alerts table, found {len(found)}"
    return found[0]


def test_the_alerts_table_lists_every_alert_with_its_severity() -> None:
    shipped = {r["alert"]: r["labels"]["severity"] for r in rules()}
    assert documented_alerts(alerts_table_text()) == shipped


def test_alerts_table_check_can_fail() -> None:
    text = f"{ALERTS_TABLE_HEADER}\n|---|---|---|\n| `A` | x | warning |\n\nafter\n"
    assert documented_alerts(text) == {"A": "warning"}
    assert documented_alerts(text) != {r["alert"]: r["labels"]["severity"] for r in rules()}


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
POD_RDMA_LABELS = {
    "resource": "rdma/a",
    "pod_uid": "u1",
    "rdma_device": "rxe0",
    "object": "hca_object",
}
POD_RDMA = ",".join(f'{k}="{v}"' for k, v in POD_RDMA_LABELS.items())
SCENARIOS: list[tuple[str, str, list[tuple[str, str]], str, list[dict[str, str]]]] = [
    (
        "plugin down",
        "RdmaSharedDpDown",
        [("up", "0x15")],
        "10m",
        [{"severity": "critical"}],
    ),
    ("plugin up", "RdmaSharedDpDown", [("up", "1x15")], "10m", []),
    (
        "rdma netns exclusive",
        "RdmaSharedDpRdmaNetnsExclusive",
        [("rdma_shared_dp_rdma_netns_exclusive", "1x15")],
        "10m",
        [{"severity": "warning"}],
    ),
    (
        "rdma netns shared",
        "RdmaSharedDpRdmaNetnsExclusive",
        [("rdma_shared_dp_rdma_netns_exclusive", "0x15")],
        "10m",
        [],
    ),
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
        "CDI spec cannot be written",
        "RdmaSharedDpCdiSpecNotWritten",
        [('rdma_shared_dp_resource_cdi_spec_current{resource="rdma/a"}', "1 1 0x10")],
        "6m",
        [{"severity": "critical", "resource": "rdma/a"}],
    ),
    (
        "CDI spec written again within the grace",
        "RdmaSharedDpCdiSpecNotWritten",
        [('rdma_shared_dp_resource_cdi_spec_current{resource="rdma/a"}', "1 0 1x10")],
        "6m",
        [],
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
        "a pod at 95% of its rdma objects limit",
        "RdmaSharedDpPodRdmaNearLimit",
        [
            (f"rdma_shared_dp_pod_rdma_usage{{{POD_RDMA}}}", "950x10"),
            (f"rdma_shared_dp_pod_rdma_limit{{{POD_RDMA}}}", "1000x10"),
        ],
        "8m",
        [{"severity": "warning", **POD_RDMA_LABELS}],
    ),
    (
        "a pod at half its rdma limit",
        "RdmaSharedDpPodRdmaNearLimit",
        [
            (f"rdma_shared_dp_pod_rdma_usage{{{POD_RDMA}}}", "500x10"),
            (f"rdma_shared_dp_pod_rdma_limit{{{POD_RDMA}}}", "1000x10"),
        ],
        "8m",
        [],
    ),
    (
        "config refused",
        "RdmaSharedDpConfigReloadFailing",
        [("rdma_shared_dp_config_last_reload_successful", "1 1 0x20")],
        "8m",
        [{"severity": "warning"}],
    ),
    (
        # The supervisor counts a refused file once; the alert must hold as long as it stays.
        "refused file still in place an hour later",
        "RdmaSharedDpConfigReloadFailing",
        [
            ("rdma_shared_dp_config_last_reload_successful", "1 1 0x70"),
            ('rdma_shared_dp_config_reloads_total{result="failure"}', "0 0 1x70"),
        ],
        "65m",
        [{"severity": "warning"}],
    ),
    (
        "the node serves no device",
        "RdmaSharedDpNodeServesNoDevice",
        [
            ('rdma_shared_dp_node_problem{reason="no_pci_bus"}', "1x15"),
            ('rdma_shared_dp_node_problem{reason="no_devices"}', "0x15"),
        ],
        "12m",
        [{"severity": "warning", "reason": "no_pci_bus"}],
    ),
    (
        "the node's bus came back within the grace",
        "RdmaSharedDpNodeServesNoDevice",
        [('rdma_shared_dp_node_problem{reason="no_pci_bus"}', "1 1 1 0x12")],
        "12m",
        [],
    ),
    (
        "refused, then a good file",
        "RdmaSharedDpConfigReloadFailing",
        [("rdma_shared_dp_config_last_reload_successful", "1 0 0 1x20")],
        "8m",
        [],
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


# --- the example queries of docs/metrics.md -------------------------------------------------------

METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def doc_queries() -> dict[str, str]:
    """Each example of the ```promql blocks: its comment's first line -> the query under it.

    An example is one or more `#` lines, then the query, then a blank line.
    """
    out: dict[str, str] = {}
    for block in re.findall(r"```promql\n(.*?)```", METRICS_DOC.read_text(), flags=re.DOTALL):
        for chunk in re.split(r"\n\s*\n", block.strip()):
            lines = chunk.splitlines()
            comments = [line for line in lines if line.lstrip().startswith("#")]
            code = [line for line in lines if not line.lstrip().startswith("#")]
            assert comments and code, f"an example needs a comment and a query:\n{chunk}"
            assert lines[: len(comments)] == comments, f"comment after the query:\n{chunk}"
            title = comments[0].lstrip("# ").strip()
            assert title not in out, f"two examples titled {title!r}"
            out[title] = "\n".join(code)
    return out


def doc_query(prefix: str) -> str:
    (expr,) = [q for title, q in doc_queries().items() if title.startswith(prefix)]
    return expr


def test_doc_examples_are_found() -> None:
    queries = doc_queries()
    assert len(queries) >= 15, list(queries)
    assert "rdma_shared_dp_hca_port_up == 0" in doc_query("Ports down")


def test_doc_queries_use_only_exported_metrics() -> None:
    for title, expr in doc_queries().items():
        used = metric_names(expr)
        assert used, f"{title}: no metric found in {expr!r}"
        assert used <= ALLOWED_SERIES, f"{title}: unknown {used - ALLOWED_SERIES}"


def test_doc_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = doc_queries()
    recorded = [{"record": f"docs:query_{i}", "expr": q} for i, q in enumerate(queries.values())]
    (tmp_path / "docs.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "docs", "rules": recorded}]})
    )
    proc = promtool("check", "rules", "docs.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(recorded)} rules found" in proc.stdout


def test_doc_query_check_can_fail(tmp_path: Path) -> None:
    # Two queries on consecutive lines (as the docs once had) are one invalid expression.
    bad = "rdma_shared_dp_resource_devices == 0\nrdma_shared_dp_worker_up == 0"
    (tmp_path / "docs.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "docs", "rules": [{"record": "x", "expr": bad}]}]})
    )
    assert promtool("check", "rules", "docs.yaml", cwd=tmp_path).returncode != 0


N2 = {"instance": "10.0.0.2:9478", "node": "n2", "job": JOB}


def on_node(target: dict[str, str], series: str) -> str:
    name, _, labels = series.partition("{")
    inner = labels.rstrip("}")
    return name + "{" + ",".join([*(f'{k}="{v}"' for k, v in target.items()), inner]) + "}"


def expr_test(
    tmp_path: Path,
    series: list[tuple[str, str]],
    expr: str,
    eval_time: str,
    expected: list[tuple[dict[str, str], float]],
) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of one expression on the given series."""
    (tmp_path / "empty.yaml").write_text("groups: []\n")
    samples = [
        {"labels": "{" + ",".join(f'{k}="{v}"' for k, v in sorted(lbl.items())) + "}", "value": v}
        for lbl, v in expected
    ]
    unit = {
        "rule_files": ["empty.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    {"expr": expr, "eval_time": eval_time, "exp_samples": samples}
                ],
            }
        ],
    }
    (tmp_path / "unit.yaml").write_text(yaml.safe_dump(unit))
    return promtool("test", "rules", "unit.yaml", cwd=tmp_path)


# Two nodes with the same device name, and an HCA that two resources match on the first node.
_HCA = 'pci_address="0000:03:00.0",rdma_device="mlx5_0",netdev="ib0",link_type="infiniband"'
PORTS_TWO_NODES = [
    (on_node(N1, 'rdma_shared_dp_hca_port_up{rdma_device="mlx5_0",port="1"}'), "0x10"),
    (on_node(N2, 'rdma_shared_dp_hca_port_up{rdma_device="mlx5_0",port="1"}'), "1x10"),
    (on_node(N1, f'rdma_shared_dp_hca_info{{resource="rdma/a",{_HCA},numa_node="0"}}'), "1x10"),
    (on_node(N1, f'rdma_shared_dp_hca_info{{resource="rdma/b",{_HCA},numa_node="0"}}'), "1x10"),
    (on_node(N2, f'rdma_shared_dp_hca_info{{resource="rdma/a",{_HCA},numa_node="0"}}'), "1x10"),
]
PORT_DOWN_ON_N1 = (
    {**N1, "rdma_device": "mlx5_0", "port": "1", "pci_address": "0000:03:00.0", "netdev": "ib0"},
    0.0,
)
# What docs/metrics.md had before: the same device name on two nodes is many-to-many.
OLD_PORTS_DOWN = (
    "(rdma_shared_dp_hca_port_up == 0) * on (rdma_device) group_left (resource, pci_address,"
    " netdev) rdma_shared_dp_hca_info"
)


def test_doc_ports_down_query_with_two_nodes(tmp_path: Path) -> None:
    proc = expr_test(tmp_path, PORTS_TWO_NODES, doc_query("Ports down"), "5m", [PORT_DOWN_ON_N1])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_old_ports_down_query_fails_with_two_nodes(tmp_path: Path) -> None:
    proc = expr_test(tmp_path, PORTS_TWO_NODES, OLD_PORTS_DOWN, "5m", [PORT_DOWN_ON_N1])
    assert proc.returncode != 0
    assert "many-to-many" in proc.stdout + proc.stderr


# n1: every registration fails; n2: failures, but registrations succeed too.
REGISTRATIONS_TWO_NODES = [
    (
        on_node(N1, 'rdma_shared_dp_registrations_total{resource="rdma/a",result="failure"}'),
        "0+1x30",
    ),
    (on_node(N1, 'rdma_shared_dp_registrations_total{resource="rdma/a",result="success"}'), "1x30"),
    (
        on_node(N2, 'rdma_shared_dp_registrations_total{resource="rdma/a",result="failure"}'),
        "0+1x30",
    ),
    (
        on_node(N2, 'rdma_shared_dp_registrations_total{resource="rdma/a",result="success"}'),
        "0+1x30",
    ),
]
ONLY_N1_FAILING = ({"instance": N1["instance"], "node": "n1", "resource": "rdma/a"}, 1.0)
OLD_REGISTRATIONS = (
    'increase(rdma_shared_dp_registrations_total{result="failure"}[10m]) > 0'
    ' unless increase(rdma_shared_dp_registrations_total{result="success"}[10m]) > 0'
)


def test_doc_registrations_query_with_two_nodes(tmp_path: Path) -> None:
    expr = f"sgn({doc_query('Registrations failing')})"  # the increase itself is extrapolated
    proc = expr_test(tmp_path, REGISTRATIONS_TWO_NODES, expr, "20m", [ONLY_N1_FAILING])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_old_registrations_query_fires_although_registrations_succeed(tmp_path: Path) -> None:
    expr = f"sgn({OLD_REGISTRATIONS})"
    proc = expr_test(tmp_path, REGISTRATIONS_TWO_NODES, expr, "20m", [ONLY_N1_FAILING])
    assert proc.returncode != 0
    assert "n2" in proc.stdout + proc.stderr  # reported for the node whose registrations work


def test_doc_examples_of_alerts_are_the_alerts() -> None:
    def squash(expr: str) -> str:
        return re.sub(r"\s+", " ", expr).replace("( ", "(").replace(" )", ")").strip()

    exprs = {r["alert"]: squash(r["expr"]) for r in rules() if "alert" in r}
    for title, alert in (
        ("Crash-looping workers", "RdmaSharedDpWorkerCrashLooping"),
        ("Registrations failing", "RdmaSharedDpRegistrationsFailing"),
        ("The newest config file was refused", "RdmaSharedDpConfigReloadFailing"),
    ):
        assert squash(doc_query(title)) == exprs[alert], title


def test_deployment_doc_describes_every_dashboard_panel() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    section = doc[doc.index("### Dashboard panels") : doc.index("## Upgrading")]
    described = set(re.findall(r"^\| [^|]+ \| ([^|]+) \| [^|]+ \|$", section, flags=re.MULTILINE))
    panels = {p["title"] for p in dashboard()["panels"] if p["type"] != "row"}
    assert panels, "no panels found"
    assert panels <= {d.strip() for d in described}, f"not described: {panels - described}"
