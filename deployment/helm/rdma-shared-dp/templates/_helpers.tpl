{{/* The image reference: repository and tag, the tag defaulting to the chart's appVersion. */}}
{{- define "rdma-shared-dp.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The kubelet's root folder without a trailing slash. */}}
{{- define "rdma-shared-dp.kubeletRoot" -}}
{{ trimSuffix "/" .Values.kubeletRootDir }}
{{- end -}}

{{/* A component's object (from files/, the kustomize components' own manifests) in the release
     namespace, with extra labels merged in. Args: (list $ object labels namespaced). */}}
{{- define "rdma-shared-dp.object" -}}
{{- $root := index . 0 -}}
{{- $obj := index . 1 -}}
{{- $_ := set $obj.metadata "labels" (merge (dict) (index . 2) ($obj.metadata.labels | default (dict))) -}}
{{- if index . 3 }}{{- $_ := set $obj.metadata "namespace" $root.Release.Namespace -}}{{- end }}
{{ toYaml $obj }}
{{- end -}}

{{/* A probe's handler on the metrics port: HTTP, HTTPS when the endpoint serves TLS, or only a
     TCP connect when it asks for client certificates (the kubelet's probes present none).
     Args: (list $ "/path"). */}}
{{- define "rdma-shared-dp.probe" -}}
{{- $root := index . 0 -}}
{{- $tls := $root.Values.metrics.tls -}}
{{- if $tls.clientCASecretName -}}
tcpSocket:
  port: metrics
{{- else -}}
httpGet:
  path: {{ index . 1 }}
  port: metrics
{{- if $tls.secretName }}
  scheme: HTTPS
{{- end }}
{{- end -}}
{{- end -}}

{{/* Value combinations the schema cannot refuse, refused with what to do instead. */}}
{{- define "rdma-shared-dp.checkValues" -}}
{{- $managed := list "RDMA_SHARED_DP_DEVICE_PLUGIN_DIR" "RDMA_SHARED_DP_PLUGINS_REGISTRY_DIR" "RDMA_SHARED_DP_POD_RESOURCES_SOCKET" "RDMA_SHARED_DP_RUNTIME_DIR" "RDMA_SHARED_DP_METRICS_ADDRESS" "RDMA_SHARED_DP_CDI_DIR" "RDMA_SHARED_DP_METRICS_TLS_CERT_FILE" "RDMA_SHARED_DP_METRICS_TLS_KEY_FILE" "RDMA_SHARED_DP_METRICS_TLS_CLIENT_CA_FILE" "RDMA_SHARED_DP_POD_METRICS" -}}
{{- range $name, $_ := .Values.extraEnv -}}
{{- if has $name $managed -}}
{{- fail (printf "extraEnv.%s: the chart sets this variable from its values (metrics.port, metrics.tls, metrics.perPodSeries, cdi, kubeletRootDir); set those instead" $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.metrics.tls.clientCASecretName (not .Values.metrics.tls.secretName) -}}
{{- fail "metrics.tls.clientCASecretName needs metrics.tls.secretName: client certificates are checked only over TLS" -}}
{{- end -}}
{{- $m := .Values.monitoring -}}
{{- if and $m.enabled .Values.metrics.tls.clientCASecretName (not $m.clientCertSecretName) (not $m.tlsConfig.cert) -}}
{{- fail "metrics.tls.clientCASecretName is set, so Prometheus needs a client certificate: set monitoring.clientCertSecretName (or monitoring.tlsConfig.cert and keySecret)" -}}
{{- end -}}
{{- end -}}

{{/* The ServiceMonitor endpoint's tlsConfig: one made from the TLS secrets, with
     monitoring.tlsConfig merged over it (its keys win). Empty without either. */}}
{{- define "rdma-shared-dp.scrapeTLS" -}}
{{- $tls := .Values.metrics.tls -}}
{{- $config := dict -}}
{{- if $tls.secretName -}}
{{- $_ := set $config "ca" (dict "secret" (dict "name" $tls.secretName "key" "ca.crt")) -}}
{{- end -}}
{{- with .Values.monitoring.clientCertSecretName -}}
{{- $_ := set $config "cert" (dict "secret" (dict "name" . "key" "tls.crt")) -}}
{{- $_ := set $config "keySecret" (dict "name" . "key" "tls.key") -}}
{{- end -}}
{{- $config = mustMergeOverwrite $config (deepCopy .Values.monitoring.tlsConfig) -}}
{{- if $config }}{{ toYaml $config }}{{ end -}}
{{- end -}}
